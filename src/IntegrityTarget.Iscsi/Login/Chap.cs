using System.Security.Cryptography;
using System.Text;

namespace IntegrityTarget.Iscsi.Login;

/// <summary>CHAP with MD5 (RFC 1994, algorithm 5) as iSCSI uses it (RFC 7143 §12.1.3).</summary>
internal static class Chap
{
    public const string Md5Algorithm = "5";
    public const int ChallengeLength = 16;

    /// <summary>MD5(identifier || secret || challenge).</summary>
    public static byte[] Response(byte id, string secret, ReadOnlySpan<byte> challenge)
    {
        var s = Encoding.UTF8.GetBytes(secret);
        var input = new byte[1 + s.Length + challenge.Length];
        input[0] = id;
        s.CopyTo(input, 1);
        challenge.CopyTo(input.AsSpan(1 + s.Length));
        return MD5.HashData(input);
    }

    /// <summary>Binary values are "0x" hex or "0b" base64 (RFC 7143 §6.1).</summary>
    public static byte[]? DecodeBinary(string value)
    {
        try
        {
            if (value.Length > 2 && (value.StartsWith("0x", StringComparison.OrdinalIgnoreCase)))
            {
                var hex = value[2..];
                if (hex.Length % 2 == 1) hex = "0" + hex;
                return Convert.FromHexString(hex);
            }
            if (value.Length > 2 && value.StartsWith("0b", StringComparison.OrdinalIgnoreCase))
                return Convert.FromBase64String(value[2..]);
        }
        catch (FormatException)
        {
        }
        return null;
    }

    public static string EncodeHex(ReadOnlySpan<byte> bytes) => "0x" + Convert.ToHexString(bytes).ToLowerInvariant();

    public static bool FixedTimeEquals(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b) =>
        CryptographicOperations.FixedTimeEquals(a, b);
}
