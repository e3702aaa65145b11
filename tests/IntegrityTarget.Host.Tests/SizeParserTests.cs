using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

public class SizeParserTests
{
    [TestCase("1048576", 1048576L)]
    [TestCase("512K", 512L * 1024)]
    [TestCase("64MiB", 64L << 20)]
    [TestCase("1G", 1L << 30)]
    [TestCase("1 GiB", 1L << 30)]
    [TestCase("2tib", 2L << 40)]
    [TestCase("1.5GiB", 3L << 29)]
    [TestCase("500MB", 500_000_000L)]
    [TestCase("1GB", 1_000_000_000L)]
    [TestCase("4096B", 4096L)]
    [TestCase("1_073_741_824", 1L << 30)]
    public void Parses_bytes_binary_and_decimal_units(string text, long expected)
    {
        Assert.That(SizeParser.TryParse(text, out long bytes, out var error), Is.True, error);
        Assert.That(bytes, Is.EqualTo(expected));
    }

    [TestCase("")]
    [TestCase("big")]
    [TestCase("-1G")]
    [TestCase("1.3B")]
    [TestCase("99999999999T")]
    [TestCase("1 parsec")]
    public void Rejects_what_is_not_a_size_with_a_reason(string text)
    {
        Assert.That(SizeParser.TryParse(text, out _, out var error), Is.False);
        Assert.That(error, Is.Not.Empty);
    }

    [TestCase(1L << 30, "1 GiB")]
    [TestCase(512L << 20, "512 MiB")]
    [TestCase(1536L << 20, "1.5 GiB")]
    [TestCase(4096L, "4 KiB")]
    [TestCase(1000L, "1000 B")]
    public void Formats_sizes_for_people(long bytes, string expected) => Assert.That(SizeParser.Format(bytes), Is.EqualTo(expected));
}
