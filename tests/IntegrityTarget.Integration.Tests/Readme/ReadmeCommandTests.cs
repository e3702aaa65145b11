using System.Text;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Readme;

// README.md's shell blocks (```sh, ```bash, ```shell) are run by this test, as written, in a copy of the
// repository's tracked files (a fresh clone), with `integrity-target` on PATH as the program just built,
// inside a private network namespace (so 127.0.0.1:3260 is free and nothing else on the machine is
// reached). A block passes when every command in it succeeds (bash -e -o pipefail).
//
// A block that needs more than that says so in an HTML comment on the line(s) right above its fence,
// which readers of the rendered README do not see but anyone editing it does:
//
//   <!-- readme-test: server="serve --no-config" -->  run `integrity-target ARGS` in the background (from
//                                                     the copy's root) while the block runs; it must stop
//                                                     cleanly on SIGTERM afterwards
//   <!-- readme-test: daemon -->                      the block starts a server itself (its first command
//                                                     with `serve`, which runs until stopped): the commands
//                                                     before it run first, then it is started in the
//                                                     background, and the rest runs once it logged "Ready;"
//   <!-- readme-test: runs-for=10 -->                 the block runs until stopped (a VM, a server): it must
//                                                     still be running after 10 s, then it is stopped
//   <!-- readme-test: log="REGEX" -->                 afterwards the server's output must match REGEX (e.g.
//                                                     that QEMU really logged in)
//   <!-- readme-test: install -->                     the block installs integrity-target: it runs with a
//                                                     fresh HOME, an empty /usr/local of its own and the
//                                                     default PATH (without the test's program), and
//                                                     `integrity-target` must be on PATH afterwards
//   <!-- readme-test: instead="CMD" because="WHY" --> the block cannot run on a test host (no Docker
//                                                     engine, no kernel initiator, it is the CI itself):
//                                                     CMD runs instead and must succeed, and WHY says why
//   <!-- readme-test: ceph -->                        the block talks to a Ceph cluster: the ceph blocks run
//                                                     one after another, in README order, in one private
//                                                     network and mount namespace holding a throwaway
//                                                     ceph-mini cluster, with /etc/ceph (a tmpfs there) set up
//                                                     as on an admin node (ceph.conf naming the monitors,
//                                                     client.admin's keyring); a later block uses what an
//                                                     earlier one created (pools, keyrings, images)
//
// Keys combine (server + log, daemon + log, ...). Anything else in a readme-test comment is an error, and
// so is a block that fails: an example that does not work is a README bug. New README sections follow
// the same convention; prefer a block that runs as written over a marker.

/// <summary>Runs every shell block of README.md against a real integrity-target (issue 13).</summary>
[TestFixture, Category("Readme"), NonParallelizable]
public partial class ReadmeCommandTests
{
    public sealed record Block(int Line, string Code, IReadOnlyDictionary<string, string> Marker)
    {
        public override string ToString() => $"README.md:{Line}";
    }

    static readonly string[] Keys = ["server", "daemon", "runs-for", "log", "instead", "because", "install", "ceph"];

    [GeneratedRegex(@"^<!--\s*readme-test:(.*?)-->\s*$")]
    private static partial Regex MarkerLine();

    [GeneratedRegex(@"([a-z-]+)(?:=(""[^""]*""|\S+))?")]
    private static partial Regex MarkerItem();

    public static List<Block> Parse(string readme)
    {
        var lines = readme.Replace("\r\n", "\n").Split('\n');
        var blocks = new List<Block>();
        for (int i = 0; i < lines.Length; i++)
        {
            var fence = lines[i].Trim();
            if (fence is not ("```sh" or "```bash" or "```shell")) continue;
            var marker = new Dictionary<string, string>();
            for (int j = i - 1; j >= 0 && MarkerLine().Match(lines[j].Trim()) is { Success: true } m; j--)
                foreach (Match item in MarkerItem().Matches(m.Groups[1].Value))
                    marker[item.Groups[1].Value] = item.Groups[2].Success ? item.Groups[2].Value.Trim('"') : "";
            var code = new StringBuilder();
            int start = i + 1;
            for (i++; i < lines.Length && lines[i].Trim() != "```"; i++) code.AppendLine(lines[i]);
            blocks.Add(new Block(start, code.ToString(), marker));
        }
        return blocks;
    }

    static string ReadmePath => Path.Combine(Paths.RepoRoot, "README.md");

    public static IEnumerable<TestCaseData> Blocks() =>
        Parse(File.ReadAllText(ReadmePath)).Where(b => !b.Marker.ContainsKey("ceph")).Select(b => new TestCaseData(b).SetName($"README.md line {b.Line}: {FirstCommand(b.Code)}"));

    /// <summary>The block's commands: lines without comments and blank lines, continuation lines joined.</summary>
    public static List<string> Commands(string code)
    {
        var commands = new List<string>();
        var sb = new StringBuilder();
        foreach (var raw in code.Split('\n'))
        {
            var line = raw.TrimEnd();
            if (sb.Length == 0 && (line.TrimStart().StartsWith('#') || line.Trim().Length == 0)) continue;
            if (line.EndsWith('\\')) { sb.Append(line[..^1]).Append(' '); continue; }
            sb.Append(line);
            commands.Add(sb.ToString().Trim());
            sb.Clear();
        }
        if (sb.Length > 0) commands.Add(sb.ToString().Trim());
        return commands;
    }

    public static string FirstCommand(string code) => Commands(code).FirstOrDefault() ?? "(empty)";

    [GeneratedRegex(@"(^|\s)serve(\s|$)")]
    private static partial Regex ServeWord();

    /// <summary>A daemon block split around its server command.</summary>
    public static (string Before, string Server, string After) SplitAtServer(string code)
    {
        var cmds = Commands(code);
        int i = cmds.FindIndex(c => ServeWord().IsMatch(c));
        Assert.That(i, Is.GreaterThanOrEqualTo(0), "a daemon block needs a command with `serve`");
        return (string.Join('\n', cmds.Take(i)), cmds[i], string.Join('\n', cmds.Skip(i + 1)));
    }

    string _work = null!, _bin = null!;

    [OneTimeSetUp]
    public void MakeFreshCopy()
    {
        Tools.RequireTool("unshare");
        Tools.RequireTool("ip");
        // A fresh clone: the repository's tracked files (and new ones not yet committed), nothing built.
        _work = Directory.CreateTempSubdirectory("it-readme-").FullName;
        var files = Tools.Run("git", ["-C", Paths.RepoRoot, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], TimeSpan.FromMinutes(1));
        Assert.That(files.ExitCode, Is.EqualTo(0), () => files.Describe());
        foreach (var rel in files.StdOut.Split('\0', StringSplitOptions.RemoveEmptyEntries))
        {
            var src = Path.Combine(Paths.RepoRoot, rel);
            if (!File.Exists(src)) continue; // deleted in the work tree
            var dst = Path.Combine(_work, "repo", rel);
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            File.Copy(src, dst);
        }
        // `integrity-target` on PATH is the program the tests run (the built one).
        _bin = Path.Combine(_work, "bin");
        Directory.CreateDirectory(_bin);
        var launcher = Path.Combine(_bin, "integrity-target");
        File.WriteAllText(launcher, $"#!/bin/sh\nexec dotnet '{Paths.ServerDll}' \"$@\"\n");
        var chmod = Tools.Run("chmod", ["755", launcher], TimeSpan.FromSeconds(30));
        Assert.That(chmod.ExitCode, Is.EqualTo(0), () => chmod.Describe());
    }

    [OneTimeTearDown]
    public void RemoveCopy()
    {
        if (Environment.GetEnvironmentVariable("KEEP_TEST_DATA") == "1") return;
        try { Directory.Delete(_work, true); } catch (IOException) { }
    }

    [Test]
    public void Every_readme_test_marker_is_known_and_a_block_that_is_not_run_says_why()
    {
        var blocks = Parse(File.ReadAllText(ReadmePath));
        Assert.That(blocks, Has.Count.GreaterThan(5), "README.md has shell blocks");
        foreach (var b in blocks)
        {
            Assert.That(b.Marker.Keys.Except(Keys), Is.Empty, $"{b}: unknown readme-test key (known: {string.Join(", ", Keys)})");
            if (b.Marker.ContainsKey("instead"))
                Assert.That(b.Marker.GetValueOrDefault("because"), Is.Not.Null.And.Not.Empty, $"{b}: instead=... needs because=\"why it cannot run here\"");
            if (b.Marker.TryGetValue("runs-for", out var s))
                Assert.That(int.TryParse(s, out var secs) && secs is > 0 and <= 60, Is.True, $"{b}: runs-for must be 1..60 seconds");
        }
    }

    [TestCaseSource(nameof(Blocks))]
    public void Readme_block_runs_as_written(Block block)
    {
        var r = Tools.Run(Tools.RequireTool("unshare"), ["--net", "--mount", "--", "bash", Driver(block)], TimeSpan.FromMinutes(5));
        TestContext.Out.WriteLine(r.Describe(20000));
        Assert.That(r.ExitCode, Is.EqualTo(0), () => $"{block} failed:\n{block.Code}\n{r.Describe(8000)}");
    }

    [Test]
    public void Readme_ceph_blocks_run_in_order_against_a_throwaway_cluster()
    {
        var blocks = Parse(File.ReadAllText(ReadmePath)).Where(b => b.Marker.ContainsKey("ceph")).ToList();
        Assert.That(blocks, Is.Not.Empty, "README.md's Ceph section has blocks marked ceph");
        using var cluster = new NamespacedCephCluster(Path.Combine(_work, "ceph"));
        foreach (var block in blocks)
        {
            TestContext.Progress.WriteLine($"{block}: {FirstCommand(block.Code)}");
            var r = cluster.Run(Driver(block), TimeSpan.FromMinutes(5));
            TestContext.Out.WriteLine(r.Describe(20000));
            Assert.That(r.ExitCode, Is.EqualTo(0), () => $"{block} failed:\n{block.Code}\n{r.Describe(8000)}");
        }
    }

    /// <summary>The script that runs one block as its marker says (in a namespace the caller enters); returns its path.</summary>
    string Driver(Block block)
    {
        var m = block.Marker;
        var script = new StringBuilder();
        script.AppendLine("set -u");
        script.AppendLine("ip link set lo up");
        script.AppendLine($"cd '{Path.Combine(_work, "repo")}'");
        if (m.ContainsKey("install"))
        {
            // A machine where nothing is installed yet: this mount namespace's own empty /usr/local, a new
            // HOME (the NuGet cache stays, so no package is downloaded again), Debian's default PATH.
            script.AppendLine("mount -t tmpfs tmpfs /usr/local || exit 88");
            script.AppendLine("export NUGET_PACKAGES=${NUGET_PACKAGES:-$HOME/.nuget/packages}");
            script.AppendLine("export HOME=$(mktemp -d)");
            script.AppendLine("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        }
        else script.AppendLine($"export PATH='{_bin}':\"$PATH\"");
        script.AppendLine("export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1");
        // The test run's own cluster (CEPH_CONF from .ci/run) is outside this network namespace: a block uses
        // the Ceph defaults (/etc/ceph) as a reader's shell would.
        script.AppendLine("unset CEPH_CONF CEPH_ARGS");
        script.AppendLine(Functions);
        var blockFile = Path.Combine(_work, $"block-{block.Line}.sh");
        File.WriteAllText(blockFile, block.Code);
        script.AppendLine($"export BLOCK={Q(blockFile)}");
        string? serverCmd = m.TryGetValue("server", out var args) ? "integrity-target " + args : null;
        string body = block.Code;
        if (m.ContainsKey("daemon"))
        {
            var (before, server, after) = SplitAtServer(block.Code);
            if (before.Length > 0) script.AppendLine($"bash -eo pipefail -c {Q(before)} </dev/null || exit 89");
            serverCmd = server;
            body = after;
            script.AppendLine("STOP_SIGNAL=INT");
        }
        if (m.TryGetValue("instead", out var instead))
        {
            TestContext.Out.WriteLine($"{block}: not run as written because {m["because"]}; instead: {instead}");
            body = instead;
        }
        if (serverCmd != null) script.AppendLine($"start_server {Q(serverCmd)} || exit 90");
        var bodyFile = Path.Combine(_work, $"body-{block.Line}.sh");
        File.WriteAllText(bodyFile, "set -eo pipefail\n" + body + "\n");
        blockFile = bodyFile;
        if (m.TryGetValue("runs-for", out var secs)) script.AppendLine($"run_for {secs} {Q(blockFile)}; rc=$?");
        else script.AppendLine($"bash {Q(blockFile)} </dev/null; rc=$?");
        script.AppendLine("echo \"== block exit code $rc\"");
        if (m.ContainsKey("install"))
            script.AppendLine("found=$(command -v integrity-target) && echo \"== integrity-target on PATH: $found\" || { echo '== integrity-target is not on PATH'; [ $rc -ne 0 ] || rc=93; }");
        if (serverCmd != null) script.AppendLine("stop_server || { [ $rc -ne 0 ] || rc=91; }");
        if (m.TryGetValue("log", out var pattern))
            script.AppendLine($"grep -Eq {Q(pattern)} \"$SERVER_LOG\" || {{ echo \"== the server log does not match {pattern.Replace("\"", "'")}\"; [ $rc -ne 0 ] || rc=92; }}");
        script.AppendLine("exit $rc");
        var driver = Path.Combine(_work, $"driver-{block.Line}.sh");
        File.WriteAllText(driver, script.ToString());
        return driver;
    }

    static string Q(string s) => "'" + s.Replace("'", "'\\''") + "'";

    // Shell helpers of the driver. A server runs in its own process group (setsid), so SIGTERM reaches
    // `dotnet run` and the server it started alike; it counts as stopped cleanly when it logged so.
    const string Functions = """
        SERVER_LOG=$(mktemp /tmp/readme-server.XXXXXX)
        STOP_SIGNAL=TERM
        start_server() {
          echo "== starting: $1"
          # Job control on: the server gets its own process group and, unlike a plain background job,
          # does not start with SIGINT ignored, so Ctrl-C can be sent to it as in a terminal. A shell cannot
          # undo a disposition it was started with, and the test runner itself may run with SIGINT and SIGHUP
          # ignored (a CI job started in the background or under nohup): env puts their defaults back.
          set -m
          env --default-signal=INT,QUIT,HUP bash -c "$1" </dev/null >"$SERVER_LOG" 2>&1 &
          SERVER_PID=$!
          set +m
          for _ in $(seq 1800); do
            grep -q 'Ready;' "$SERVER_LOG" && return 0
            if ! kill -0 $SERVER_PID 2>/dev/null; then echo "== server exited while starting:"; cat "$SERVER_LOG"; return 1; fi
            sleep 0.1
          done
          echo "== server not ready after 180 s:"; cat "$SERVER_LOG"; kill -KILL -$SERVER_PID; return 1
        }
        stop_server() {
          # A block's own server stops as a user stops it, with Ctrl-C: SIGINT to its whole process group
          # (`dotnet run` and the server it started); a background server with SIGTERM, as systemd does.
          kill -$STOP_SIGNAL -$SERVER_PID 2>/dev/null
          for _ in $(seq 600); do kill -0 -$SERVER_PID 2>/dev/null || break; sleep 0.1; done
          if kill -0 -$SERVER_PID 2>/dev/null; then
            # What the hung process group was doing: process states (T = stopped) and each thread's kernel wait.
            echo "== server still running 60 s after SIG$STOP_SIGNAL:"
            ps -o pid,stat,wchan:32,args -g $SERVER_PID
            for t in /proc/[0-9]*/task/*; do
              [ "$(cut -d' ' -f5 $t/stat 2>/dev/null)" = "$SERVER_PID" ] && echo "$t $(cut -d' ' -f2-3 $t/stat) $(cat $t/wchan 2>/dev/null)"
            done
            kill -KILL -$SERVER_PID
          fi
          wait $SERVER_PID 2>/dev/null
          echo "== server output:"; cat "$SERVER_LOG"
          grep -q 'Stopped; every volume flushed' "$SERVER_LOG" || { echo "== the server did not stop cleanly"; return 1; }
        }
        run_for() {
          setsid bash "$2" </dev/null >"$2.out" 2>&1 &
          local pid=$!
          sleep "$1"
          if ! kill -0 $pid 2>/dev/null; then wait $pid; echo "== ended within $1 s (exit $?):"; cat "$2.out"; return 1; fi
          kill -TERM -$pid
          for _ in $(seq 300); do kill -0 -$pid 2>/dev/null || break; sleep 0.1; done
          kill -KILL -$pid 2>/dev/null; wait $pid 2>/dev/null
          echo "== still running after $1 s, stopped; its output:"; head -c 2000 "$2.out"; echo
          return 0
        }
        """;
}
