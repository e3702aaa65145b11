using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace IntegrityTarget.Transport;

/// <summary>How long an accept loop waits after a failed accept: 10 ms, doubling up to 1 s, reset by a success.</summary>
internal static class AcceptBackoff
{
    public static readonly TimeSpan Min = TimeSpan.FromMilliseconds(10);
    public static readonly TimeSpan Max = TimeSpan.FromSeconds(1);

    public static TimeSpan Next(TimeSpan current) => current * 2 > Max ? Max : current * 2;

    public static string Describe(SocketError error) => error switch
    {
        SocketError.TooManyOpenSockets => "out of file descriptors: lower Iscsi:ConnectionLimit or raise the limit (ulimit -n, LimitNOFILE=)",
        SocketError.NoBufferSpaceAvailable => "out of socket buffers or memory",
        SocketError.ConnectionAborted or SocketError.ConnectionReset => "the peer went away before it was accepted",
        _ => "unexpected",
    };
}

/// <summary>The process's limit on open file descriptors (RLIMIT_NOFILE), which bounds how many connections it can hold.</summary>
public static class FileDescriptorLimit
{
    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit { public ulong Current; public ulong Maximum; }

    private const int RlimitNofile = 7; // Linux

    [DllImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static extern int GetRLimit(int resource, out RLimit limit);

    /// <summary>The soft limit, or null where it cannot be read (not Linux).</summary>
    public static long? Soft()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try { return GetRLimit(RlimitNofile, out var l) == 0 ? (long)Math.Min(l.Current, long.MaxValue) : null; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    /// <summary>Descriptors a serving process needs besides its connections: LUN files, listeners, the status socket, logs, the runtime.</summary>
    public const int Reserve = 64;

    /// <summary>
    /// The connection limit to use: the configured one, else half the soft limit (at most 4096, at least 16).
    /// A configured limit the descriptors cannot hold is lowered, with a warning saying so.
    /// </summary>
    public static int ConnectionLimit(int? configured, long? softLimit, out string? warning)
    {
        warning = null;
        if (softLimit is not { } soft) return configured ?? 1024;
        long usable = Math.Max(16, soft - Reserve);
        if (configured is null) return (int)Math.Clamp(soft / 2, 16, 4096);
        if (configured <= usable) return configured.Value;
        warning = $"Iscsi:ConnectionLimit {configured} needs more file descriptors than RLIMIT_NOFILE {soft} allows " +
                  $"({Reserve} are kept for LUN files, listeners and the runtime); using {usable}. " +
                  "Raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit) or lower Iscsi:ConnectionLimit";
        return (int)usable;
    }
}
