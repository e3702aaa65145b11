using System.Runtime.InteropServices;
using IntegrityTarget.Host.Cli;

// SIGTERM/SIGINT ask the current verb to stop cleanly (serve drains, flushes and exits 0);
// a second SIGINT is left to the runtime and ends the process at once. A repeated SIGTERM does not cut
// the drain short: `dotnet run` passes on the SIGTERM its process group already delivered to the server.
using var stop = new CancellationTokenSource();
void OnSignal(PosixSignalContext c)
{
    if (stop.IsCancellationRequested)
    {
        if (c.Signal == PosixSignal.SIGTERM) c.Cancel = true;
        return;
    }
    c.Cancel = true;
    stop.Cancel();
}
using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
// SIGHUP: serve re-reads its configuration and applies what changed (integrity-target reload does the same);
// any other verb ends on it, as programs do.
var reload = new ReloadSignal();
Hangup.ClaimForServe(args); // a serve started under nohup still reloads on SIGHUP
using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => c.Cancel = reload.Raise());
return await Cli.RunAsync(args, CliContext.ForProcess(stop.Token, reload));
