using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace IntegrityTarget.Host.Config;

/// <summary>
/// Reads one portal as written in Portals or --listen: <c>PORT</c>, <c>ADDR</c>, <c>ADDR:PORT</c>,
/// <c>[v6]</c> or <c>[v6]:PORT</c> (<c>*</c> stands for 0.0.0.0). IPv4 addresses must be four dotted
/// numbers, so <c>3261</c> is a port and never the address 0.0.12.189; an IPv6 address needs brackets,
/// because in <c>fe80::1:3260</c> nobody can tell whether 3260 is the port. Host names are not resolved.
/// </summary>
public static class PortalParser
{
    public const int IscsiPort = 3260;
    /// <summary>The address a bare port listens on: loopback, like the built-in default portal.</summary>
    public static readonly IPAddress DefaultAddress = IPAddress.Loopback;

    /// <param name="meaning">When the text left out the address or the port: what it was taken to mean.</param>
    /// <param name="error">Why the text is not a portal.</param>
    public static bool TryParse(string text, out IPEndPoint endpoint, out string? meaning, out string? error)
    {
        endpoint = null!; meaning = null; error = null;
        string s = text.Trim();
        if (s.Length == 0) { error = "is empty"; return false; }
        if (s == "*") s = "0.0.0.0";
        else if (s.StartsWith("*:", StringComparison.Ordinal)) s = "0.0.0.0" + s[1..];

        string addressText;
        string? portText;
        if (s.All(char.IsAsciiDigit))
        {
            addressText = ""; portText = s;
        }
        else if (s.StartsWith('['))
        {
            int close = s.IndexOf(']');
            if (close < 0) { error = $"'{text}' has no closing ']' (write [IPv6] or [IPv6]:PORT, e.g. [::1]:3260)"; return false; }
            addressText = s[1..close];
            string rest = s[(close + 1)..];
            if (rest.Length == 0) portText = null;
            else if (rest[0] == ':') portText = rest[1..];
            else { error = $"'{text}' has '{rest}' after the bracketed address (write [IPv6]:PORT, e.g. [::1]:3260)"; return false; }
            if (!IPAddress.TryParse(addressText, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
            {
                error = $"'{addressText}' in brackets is not an IPv6 address (e.g. [::1]:3260, [::]:3260)";
                return false;
            }
        }
        else
        {
            int colons = s.Count(c => c == ':');
            if (colons > 1)
            {
                error = $"'{text}' is ambiguous: put an IPv6 address in brackets, [ADDRESS] or [ADDRESS]:PORT (e.g. [::1]:3260), " +
                        "so the port cannot be mistaken for part of the address";
                return false;
            }
            int colon = s.IndexOf(':');
            addressText = colon < 0 ? s : s[..colon];
            portText = colon < 0 ? null : s[(colon + 1)..];
            if (IsDottedQuad(addressText) && addressText.Split('.').Any(p => p.Length > 1 && p[0] == '0'))
            {
                // IPAddress.Parse (like inet_aton) reads 010 as octal 8: '010.0.0.1' would listen on 8.0.0.1.
                error = $"'{addressText}' has a number with a leading zero, which is read as octal (010 is 8); " +
                        "write each number without leading zeros, e.g. 10.0.0.1";
                return false;
            }
            if (!IsDottedQuad(addressText))
            {
                error = $"'{addressText}' is not an IPv4 address of four numbers (host names are not resolved); " +
                        "write PORT, ADDRESS, ADDRESS:PORT or [IPv6]:PORT, e.g. 3260, 127.0.0.1, 0.0.0.0:3260, [::1]:3260";
                return false;
            }
        }

        int port = IscsiPort;
        if (portText != null)
        {
            if (portText.Length == 0 || !portText.All(char.IsAsciiDigit) ||
                !int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port > 65535)
            {
                error = $"'{portText}' in '{text}' is not a port number from 0 to 65535 (0 = any free port)";
                return false;
            }
        }
        var address = addressText.Length == 0 ? DefaultAddress : IPAddress.Parse(addressText);
        endpoint = new IPEndPoint(address, port);
        if (addressText.Length == 0)
            meaning = $"'{text.Trim()}' is a port alone: listening on {endpoint} (address {DefaultAddress}, loopback only; write 0.0.0.0:{port} for every interface)";
        else if (portText == null)
            meaning = $"'{text.Trim()}' gives no port: listening on {endpoint} (the iSCSI port {IscsiPort})";
        return true;
    }

    private static bool IsDottedQuad(string s)
    {
        var parts = s.Split('.');
        return parts.Length == 4 && parts.All(p => p.Length is > 0 and <= 3 && p.All(char.IsAsciiDigit) && int.Parse(p, CultureInfo.InvariantCulture) <= 255);
    }
}
