using System.Globalization;
using System.Text;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// Makes a client-supplied string safe to put in a log line: control characters (newline, carriage
/// return, ESC and every other C0/C1 control), Unicode line/paragraph separators and bidirectional
/// overrides become visible escapes (\n, \r, \t, \x1b, \u2028 ...), and very long values are cut. A
/// client can then neither start a forged line nor drive the terminal. The result contains no control
/// characters, so escaping twice changes nothing. Every log call that carries a name, key or value
/// from the network uses it (the host also applies it to every string property of every event).
/// </summary>
public static class LogText
{
    /// <summary>Longest escaped value kept; the rest is replaced by a note of how much was cut.</summary>
    public const int MaxLength = 300;

    public static string Escape(string? value)
    {
        if (value is null) return "";
        if (!NeedsEscaping(value)) return value;
        var sb = new StringBuilder(Math.Min(value.Length, MaxLength) + 16);
        int i = 0;
        for (; i < value.Length && sb.Length < MaxLength; i++)
        {
            char c = value[i];
            switch (c)
            {
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else if (IsInvisibleControl(c)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        if (i < value.Length) sb.Append("…(").Append(value.Length - i).Append(" more characters)");
        return sb.ToString();
    }

    private static bool NeedsEscaping(string value)
    {
        if (value.Length > MaxLength) return true;
        foreach (char c in value)
            if (c < 0x20 || c == 0x7f || IsInvisibleControl(c)) return true;
        return false;
    }

    /// <summary>C1 controls, line/paragraph separators, bidi embeddings/overrides/isolates, BOM, lone surrogates.</summary>
    private static bool IsInvisibleControl(char c) =>
        c is >= '\u0080' and <= '\u009f' or '\u2028' or '\u2029' or >= '\u202a' and <= '\u202e'
            or >= '\u2066' and <= '\u2069' or '\u200e' or '\u200f' or '\u061c' or '\ufeff'
        || char.IsSurrogate(c);
}
