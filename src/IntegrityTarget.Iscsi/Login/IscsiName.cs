using System.Globalization;
using System.Text;

namespace IntegrityTarget.Iscsi.Login;

/// <summary>
/// iSCSI names (RFC 7143 §4.2.7, stringprep profile RFC 3722): at most 223 bytes of UTF-8, one of
/// <c>iqn.YYYY-MM.reversed.domain[:anything]</c>, <c>eui.</c> + 16 hex digits, <c>naa.</c> + 16 or 32 hex
/// digits. Of ASCII only letters, digits, '-', '.' and ':' may appear (RFC 3722 §6 prohibits the rest:
/// space, controls, punctuation such as '_' '/' '@'); upper-case letters are accepted because the
/// profile maps them to lower case, and names compare case-insensitively. Non-ASCII letters, marks,
/// digits and symbols are allowed; control, format, separator, private-use, surrogate and unassigned
/// code points are not.
/// </summary>
public static class IscsiName
{
    public const int MaxBytes = 223;

    public static bool IsValid(string? name) => Problem(name) is null;

    /// <summary>Why <paramref name="name"/> is not an iSCSI name, or null when it is one.</summary>
    public static string? Problem(string? name)
    {
        if (string.IsNullOrEmpty(name)) return "it is empty";
        int bytes = Encoding.UTF8.GetByteCount(name);
        if (bytes > MaxBytes) return $"it is {bytes} bytes long, more than {MaxBytes}";
        foreach (var rune in name.EnumerateRunes())
        {
            if (rune.IsAscii)
            {
                char c = (char)rune.Value;
                if (!char.IsAsciiLetterOrDigit(c) && c is not ('-' or '.' or ':'))
                    return c < 0x20 || c == 0x7f ? "it contains a control character" : $"it contains '{c}' (only letters, digits, '-', '.' and ':' are allowed)";
                continue;
            }
            switch (Rune.GetUnicodeCategory(rune))
            {
                case UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse
                    or UnicodeCategory.OtherNotAssigned or UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator
                    or UnicodeCategory.ParagraphSeparator:
                    return $"it contains U+{rune.Value:X4}, which RFC 3722 prohibits";
            }
        }
        var lower = name.ToLowerInvariant();
        if (lower.StartsWith("iqn.", StringComparison.Ordinal)) return IqnProblem(lower);
        if (lower.StartsWith("eui.", StringComparison.Ordinal))
            return lower.Length == 4 + 16 && IsHex(lower.AsSpan(4)) ? null : "an eui. name is eui. followed by 16 hex digits";
        if (lower.StartsWith("naa.", StringComparison.Ordinal))
            return lower.Length is 4 + 16 or 4 + 32 && IsHex(lower.AsSpan(4)) ? null : "an naa. name is naa. followed by 16 or 32 hex digits";
        return "it starts with none of iqn., eui., naa.";
    }

    private static string? IqnProblem(string n)
    {
        const string form = "an iqn. name is iqn.YYYY-MM.reversed.domain[:anything]";
        // iqn.YYYY-MM.
        if (n.Length < 12 || !char.IsAsciiDigit(n[4]) || !char.IsAsciiDigit(n[5]) || !char.IsAsciiDigit(n[6]) || !char.IsAsciiDigit(n[7])
            || n[8] != '-' || !char.IsAsciiDigit(n[9]) || !char.IsAsciiDigit(n[10]) || n[11] != '.')
            return form;
        int month = (n[9] - '0') * 10 + (n[10] - '0');
        if (month is < 1 or > 12) return form + " (the month is 01-12)";
        int colon = n.IndexOf(':', 12);
        var authority = colon < 0 ? n.AsSpan(12) : n.AsSpan(12, colon - 12);
        if (authority.IsEmpty) return form + " (the domain is missing)";
        foreach (var label in authority.ToString().Split('.'))
        {
            if (label.Length == 0 || label[0] == '-' || label[^1] == '-') return form + " (the domain has an empty label or one that starts or ends with '-')";
            foreach (char c in label)
                if (!char.IsAsciiLetterOrDigit(c) && c != '-') return form + " (the domain has letters, digits and '-' only)";
        }
        return null;
    }

    private static bool IsHex(ReadOnlySpan<char> s)
    {
        foreach (char c in s) if (!char.IsAsciiHexDigit(c)) return false;
        return true;
    }
}
