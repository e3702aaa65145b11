using System.Text.RegularExpressions;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>
/// Parses the verbose output of libiscsi's iscsi-test-cu: the per-test outcome (passed, FAILED, and
/// "[SKIPPED]" tests, which CUnit counts as passed) and the CUnit "Run Summary" table.
/// </summary>
public sealed class CunitReport
{
    public int SummaryTotal { get; private set; } = -1;
    public int SummaryRan { get; private set; } = -1;
    public int SummaryPassed { get; private set; } = -1;
    public int SummaryFailed { get; private set; } = -1;
    public int SummaryInactive { get; private set; } = -1;
    public bool HasSummary => SummaryTotal >= 0;

    public List<string> Passed { get; } = new();
    public List<string> Failed { get; } = new();
    /// <summary>Test name → the reason libiscsi printed (e.g. "COMPAREANDWRITE is not implemented.").</summary>
    public Dictionary<string, string> Skipped { get; } = new();
    /// <summary>Failed test → the first [FAILED] message or CUnit assertion line.</summary>
    public Dictionary<string, string> FailureReasons { get; } = new();
    /// <summary>Lines carrying "[SKIPPED]" (some tests print it twice): the measure docs/iscsi-peers.md quotes for tgt.</summary>
    public int SkippedLines { get; private set; }

    static readonly Regex SuiteLine = new(@"^Suite: (.+?)\s*$");
    static readonly Regex TestLine = new(@"^  Test: (\S+) \.\.\.(.*)$");
    static readonly Regex Summary = new(@"^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)");

    public static CunitReport Parse(string output)
    {
        var r = new CunitReport();
        string suite = "?";
        string? test = null;
        string? skipReason = null, failReason = null;
        string? lastFailed = null; // CUnit prints assertion lines after FAILED

        void Finish(bool passed)
        {
            if (test is null) return;
            if (!passed) { r.Failed.Add(test); r.FailureReasons[test] = failReason ?? "(no message)"; lastFailed = failReason is null ? test : null; }
            else if (skipReason != null) r.Skipped[test] = skipReason;
            else r.Passed.Add(test);
            test = null;
        }

        void Scan(string text)
        {
            var s = text.IndexOf("[SKIPPED]", StringComparison.Ordinal);
            if (s >= 0 && skipReason is null) skipReason = text[(s + 9)..].Trim();
            var f = text.IndexOf("[FAILED]", StringComparison.Ordinal);
            if (f >= 0 && failReason is null) failReason = text[(f + 8)..].Trim();
        }

        foreach (var raw in output.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (line.Contains("[SKIPPED]", StringComparison.Ordinal)) r.SkippedLines++;
            if (lastFailed != null && Regex.IsMatch(line, @"^\s+1\. "))
            {
                r.FailureReasons[lastFailed] = line.Trim();
                lastFailed = null;
            }
            Match m;
            if ((m = Summary.Match(line)).Success && line.Contains("tests"))
            {
                Finish(true); // a test still open here printed no outcome
                r.SummaryTotal = int.Parse(m.Groups[1].Value);
                r.SummaryRan = int.Parse(m.Groups[2].Value);
                r.SummaryPassed = int.Parse(m.Groups[3].Value);
                r.SummaryFailed = int.Parse(m.Groups[4].Value);
                r.SummaryInactive = int.Parse(m.Groups[5].Value);
                continue;
            }
            if ((m = SuiteLine.Match(line)).Success) { suite = m.Groups[1].Value; continue; }
            if ((m = TestLine.Match(line)).Success)
            {
                lastFailed = null;
                test = $"{suite}.{m.Groups[1].Value}";
                skipReason = failReason = null;
                var rest = m.Groups[2].Value;
                // The outcome directly after "..." belongs to this test; text after it is late noise.
                if (rest.StartsWith("passed", StringComparison.Ordinal)) { Finish(true); continue; }
                if (rest.StartsWith("FAILED", StringComparison.Ordinal)) { Finish(false); continue; }
                Scan(rest);
                continue;
            }
            if (test is null) continue;
            var t = line.Trim();
            if (t == "passed") { Finish(true); continue; }
            if (t == "FAILED") { Finish(false); continue; }
            if (t.EndsWith("...passed", StringComparison.Ordinal)) { Scan(t); Finish(true); continue; }
            if (t.EndsWith("...FAILED", StringComparison.Ordinal)) { Scan(t); Finish(false); continue; }
            Scan(t);
        }
        // CUnit prints the assertion lines after FAILED: attach the first one when no [FAILED] text was seen.
        return r;
    }

    public string Describe() =>
        $"CUnit summary: tests total={SummaryTotal} ran={SummaryRan} passed={SummaryPassed} failed={SummaryFailed} inactive={SummaryInactive}; " +
        $"parsed: {Passed.Count} passed, {Failed.Count} failed, {Skipped.Count} skipped ({SkippedLines} [SKIPPED] lines)\n" +
        $"FAILED ({Failed.Count}):\n" + string.Concat(Failed.Select(f => $"  {f}: {FailureReasons[f]}\n")) +
        $"SKIPPED ({Skipped.Count}):\n" + string.Concat(Skipped.Select(s => $"  {s.Key}: {s.Value}\n"));
}
