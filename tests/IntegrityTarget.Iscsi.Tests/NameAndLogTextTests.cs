using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

public class NameAndLogTextTests
{
    [TestCase("iqn.2026-11.org.example:disk1")]
    [TestCase("iqn.1994-05.com.redhat:5a6b7c8d9e0f")]
    [TestCase("iqn.1991-05.com.microsoft:WIN-HOST.Corp.Example")]
    [TestCase("iqn.2001-04.com.example")]
    [TestCase("iqn.2026-11.org.example:storage.tape1.sys1.xyz:über")]
    [TestCase("eui.02004567A425678D")]
    [TestCase("naa.52004567BA64678D")]
    [TestCase("naa.62004567BA64678D0123456789ABCDEF")]
    public void Valid_iSCSI_names_are_accepted(string name) => Assert.That(IscsiName.Problem(name), Is.Null);

    [TestCase("", "empty")]
    [TestCase("iqn.2026-11.org.example:evil\n[12:00:00 ERR] forged", "control character")]
    [TestCase("iqn.2026-11.org.example:esc\u001b[2J", "control character")]
    [TestCase("iqn.2026-11.org.example:with space", "' '")]
    [TestCase("iqn.2026-11.org.example:under_score", "'_'")]
    [TestCase("iqn.2026-11.org.example:a/b", "'/'")]
    [TestCase("iqn.2026-11.org.example:bidi\u202e", "U+202E")]
    [TestCase("iqn.2026-11.org.example:nbsp\u00a0x", "U+00A0")]
    [TestCase("iqn.26-11.org.example:x", "iqn.YYYY-MM")]
    [TestCase("iqn.2026-13.org.example:x", "month")]
    [TestCase("iqn.2026-11.:x", "domain")]
    [TestCase("iqn.2026-11.-bad.example:x", "label")]
    [TestCase("iqn.x:y", "iqn.YYYY-MM")]
    [TestCase("eui.0200", "16 hex")]
    [TestCase("naa.0123456789abcdeg", "hex")]
    [TestCase("initiator1", "none of iqn., eui., naa.")]
    public void Invalid_iSCSI_names_are_refused_with_the_reason(string name, string reason) =>
        Assert.That(IscsiName.Problem(name), Does.Contain(reason));

    [Test]
    public void Names_longer_than_223_bytes_are_refused_counting_UTF8_bytes()
    {
        var prefix = "iqn.2026-11.org.example:";
        Assert.That(IscsiName.Problem(prefix + new string('a', 223 - prefix.Length)), Is.Null);
        Assert.That(IscsiName.Problem(prefix + new string('a', 224 - prefix.Length)), Does.Contain("224 bytes"));
        Assert.That(IscsiName.Problem(prefix + new string('ü', 100)), Does.Contain("more than 223"), "ü is two bytes");
    }

    [Test]
    public void Escape_makes_newlines_escapes_and_controls_visible_and_is_idempotent()
    {
        var hostile = "a\nb\r\tc\u001b[31md\u0000e\u007ff\u0085g\u2028h\u202ei";
        var escaped = LogText.Escape(hostile);
        Assert.That(escaped, Is.EqualTo("a\\nb\\r\\tc\\x1b[31md\\x00e\\x7ff\\u0085g\\u2028h\\u202ei"));
        Assert.That(escaped.Any(char.IsControl), Is.False);
        Assert.That(LogText.Escape(escaped), Is.EqualTo(escaped));
        Assert.That(LogText.Escape("plain"), Is.SameAs("plain"), "nothing to escape: no copy");
        Assert.That(LogText.Escape(null), Is.Empty);
    }

    [Test]
    public void Escape_cuts_very_long_values_and_says_how_much()
    {
        var escaped = LogText.Escape(new string('x', 10_000));
        Assert.That(escaped.Length, Is.LessThan(LogText.MaxLength + 40));
        Assert.That(escaped, Does.EndWith($"…({10_000 - LogText.MaxLength} more characters)"));
    }

    [TestCase("InitiatorName=iqn.2026-11.test:evil\n[00:00:00 ERR] forged")]
    [TestCase("InitiatorName=iqn.2026-11.test:under_score")]
    [TestCase("TargetName=iqn.2026-11.test:disk\u001b[2J")]
    public async Task A_login_with_an_invalid_iSCSI_name_is_refused_as_an_initiator_error(string key)
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        string[] keys = key.StartsWith("Target")
            ? [$"InitiatorName={TestTargets.Initiator}", key]
            : [key, $"TargetName={TestTargets.Iqn}"];
        await i.SendAsync(TestPdu.Login(keys, 1, 3, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0x0200));
        Assert.That(server.Sessions, Is.Empty);
    }
}
