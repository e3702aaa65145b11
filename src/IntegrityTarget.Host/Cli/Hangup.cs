using System.Runtime.InteropServices;

namespace IntegrityTarget.Host.Cli;

/// <summary>
/// SIGHUP inherited as ignored (a process started by <c>nohup</c>, or by a shell's background job) is never
/// handed to .NET's signal registrations. Every verb but serve keeps that disposition: nohup means "go on
/// when the terminal closes". serve gives SIGHUP its own meaning (reload), as daemons do, so it puts the
/// default disposition back before registering: a server started with nohup still reloads on SIGHUP.
/// </summary>
internal static partial class Hangup
{
    private const int SIGHUP = 1;
    private static readonly nint SigDfl = 0, SigErr = -1;

    [LibraryImport("libc", EntryPoint = "signal", SetLastError = true)]
    private static partial nint Signal(int signum, nint handler);

    /// <summary>Before the SIGHUP registration: serve takes SIGHUP even when it was inherited as ignored.</summary>
    public static void ClaimForServe(IReadOnlyList<string> args)
    {
        if (args.Count == 0 || !args[0].Equals("serve", StringComparison.OrdinalIgnoreCase)) return;
        if (Signal(SIGHUP, SigDfl) == SigErr)
            Console.Error.WriteLine($"integrity-target: cannot restore SIGHUP's default (errno {Marshal.GetLastPInvokeError()}); SIGHUP may not reload");
    }
}
