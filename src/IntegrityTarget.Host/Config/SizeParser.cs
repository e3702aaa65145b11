using System.Globalization;

namespace IntegrityTarget.Host.Config;

/// <summary>
/// Parses human sizes: plain bytes ("1048576"), binary units ("512K", "64MiB", "1G", "2TiB": powers of
/// 1024, as qemu-img and most storage tools read them) and decimal units ("500MB", "1GB": powers of 1000).
/// </summary>
public static class SizeParser
{
    private static readonly (string Suffix, long Factor)[] Units =
    [
        ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40),
        ("KB", 1000L), ("MB", 1000_000L), ("GB", 1000_000_000L), ("TB", 1000_000_000_000L),
        ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30), ("T", 1L << 40),
        ("B", 1L),
    ];

    public static bool TryParse(string? text, out long bytes, out string error)
    {
        bytes = 0; error = "";
        if (string.IsNullOrWhiteSpace(text)) { error = "is empty"; return false; }
        var s = text.Trim().Replace("_", "");
        long factor = 1;
        foreach (var (suffix, f) in Units)
        {
            if (s.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                factor = f; s = s[..^suffix.Length].TrimEnd();
                break;
            }
        }
        if (!decimal.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number))
        {
            error = $"'{text}' is not a size (examples: 1073741824, 512MiB, 1GiB, 2T)";
            return false;
        }
        decimal total = number * factor;
        if (total > long.MaxValue) { error = $"'{text}' is too large"; return false; }
        if (total != decimal.Truncate(total)) { error = $"'{text}' is not a whole number of bytes"; return false; }
        bytes = (long)total;
        return true;
    }

    /// <summary>Short human form for summaries: 1 GiB, 512 MiB, 4096 B.</summary>
    public static string Format(long bytes)
    {
        string[] names = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int i = 0; decimal v = bytes;
        while (v >= 1024 && i < names.Length - 1) { v /= 1024; i++; }
        return i == 0 ? $"{bytes} B" : $"{v.ToString(v == decimal.Truncate(v) ? "0" : "0.##", CultureInfo.InvariantCulture)} {names[i]}";
    }
}
