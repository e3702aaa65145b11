using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Harness;

[TestFixture, Category("Harness")]
public class CunitReportTests
{
    // Shapes taken from a real iscsi-test-cu 1.19 run against tgt (tests/scripts/cu-against-tgt.sh).
    const string Sample = """
        Suite: CompareAndWrite
          Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
            [SKIPPED] COMPAREANDWRITE is not implemented.
        passed
        Suite: GetLBAStatus
          Test: Simple ...passed
          Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
        FAILED
            1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
        Suite: Reserve6
          Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
            [FAILED] MODESENSE6 successful but should have failed
            RELEASE6 from the second initiator
        FAILED
            1. test_reserve6_2initiators.c:70  - CU_ASSERT_EQUAL(_r,0)
          Test: TargetWarmReset ...    [SKIPPED] Task Management functionfor WarmReset is not working/implemented

        passed
          Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6)

        Suite: iSCSIdatasn
          Test: iSCSIDataSnInvalid ...FAILED
            1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)

        Run Summary:    Type  Total    Ran Passed Failed Inactive
                      suites     51     51    n/a      0        0
                       tests    230    230    222      8        0
                     asserts  54191  54191  54180     11      n/a
        """;

    [Test]
    public void Parser_classifies_passed_failed_and_skipped_tests_and_reads_the_run_summary()
    {
        var r = CunitReport.Parse(Sample);
        Assert.That((r.SummaryTotal, r.SummaryRan, r.SummaryPassed, r.SummaryFailed, r.SummaryInactive), Is.EqualTo((230, 230, 222, 8, 0)));
        Assert.That(r.Failed, Is.EqualTo(new[] { "GetLBAStatus.BeyondEol", "Reserve6.2Initiators", "iSCSIdatasn.iSCSIDataSnInvalid" }));
        Assert.That(r.Skipped.Keys, Is.EquivalentTo(new[] { "CompareAndWrite.Simple", "Reserve6.TargetWarmReset" }));
        Assert.That(r.Skipped["CompareAndWrite.Simple"], Is.EqualTo("COMPAREANDWRITE is not implemented."));
        Assert.That(r.Passed, Is.EquivalentTo(new[] { "GetLBAStatus.Simple", "Reserve6.LUNReset" }));
        Assert.That(r.SkippedLines, Is.EqualTo(3));
        Assert.That(r.FailureReasons["iSCSIdatasn.iSCSIDataSnInvalid"], Does.StartWith("1. test_iscsi_datasn_invalid.c:98"));
    }
}
