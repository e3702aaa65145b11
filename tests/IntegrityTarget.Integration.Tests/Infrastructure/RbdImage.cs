using System.Text.Json;
using IntegrityTarget.Tests.Shared;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>
/// One RBD image of the test cluster (CEPH_CONF, or a ceph-mini cluster the test run starts) for one test: the
/// LUN path and server options that serve it, the rbd/rados commands, and direct writes into its RADOS objects
/// that bypass librbd and the gateway (a stray writer or a bad disk behind the gateway's back). Removed at dispose.
/// </summary>
public sealed class RbdImage : IDisposable
{
    public static string Conf => CephTestCluster.ConfPath;

    public string Pool => "rbd";
    public string Name { get; }
    /// <summary>"rbd/NAME", as the rbd command takes it.</summary>
    public string Spec => $"{Pool}/{Name}";
    /// <summary>"rbd:rbd/NAME", the LUN path.</summary>
    public string LunPath => $"rbd:{Spec}";

    public RbdImage(string prefix) => Name = CephTestCluster.NewImageName(prefix);

    /// <summary>Server options that serve this image as LUN 0 (created with <paramref name="size"/> when missing).</summary>
    public ServerOptions Serve(string? size = "64MiB", bool integrity = true, int blockSize = 512)
    {
        var o = new ServerOptions { LunPath = LunPath, Size = size, Integrity = integrity, BlockSize = blockSize };
        o.Extra.AddRange(["--ceph-conf", Conf]);
        return o;
    }

    /// <summary>The rbd command against the test cluster.</summary>
    public static ToolResult Rbd(params string[] args) =>
        Tools.Run(Tools.RequireTool("rbd"), new[] { "-c", Conf }.Concat(args), TimeSpan.FromMinutes(5));

    public static ToolResult Rados(params string[] args) =>
        Tools.Run(Tools.RequireTool("rados"), new[] { "-c", Conf }.Concat(args), TimeSpan.FromMinutes(2));

    static ToolResult Ok(ToolResult r)
    {
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return r;
    }

    /// <summary>A copy of the whole image in a local file (rbd export opens it read-only: allowed while a gateway holds its lock).</summary>
    public string Export(string file)
    {
        if (File.Exists(file)) File.Delete(file);
        Ok(Rbd("export", "--no-progress", Spec, file));
        return file;
    }

    public bool Exists() => Rbd("info", Spec).ExitCode == 0;

    (string Prefix, long ObjectSize) Layout()
    {
        var info = JsonDocument.Parse(Ok(Rbd("info", "--format", "json", Spec)).StdOut).RootElement;
        return (info.GetProperty("block_name_prefix").GetString()!, 1L << info.GetProperty("order").GetInt32());
    }

    /// <summary>
    /// Writes bytes at an image offset straight into the RADOS objects that hold them (rados put --offset):
    /// no librbd, no lock, no gateway.
    /// </summary>
    public void WriteBehindTheGateway(long offset, byte[] bytes, string scratchDir)
    {
        var (prefix, objectSize) = Layout();
        for (int done = 0; done < bytes.Length;)
        {
            long at = offset + done;
            long obj = at / objectSize, within = at % objectSize;
            int n = (int)Math.Min(bytes.Length - done, objectSize - within);
            var piece = Path.Combine(scratchDir, $"piece-{Guid.NewGuid():N}");
            File.WriteAllBytes(piece, bytes.AsSpan(done, n).ToArray());
            Ok(Rados("-p", Pool, "put", $"{prefix}.{obj:x16}", piece, "--offset", within.ToString()));
            File.Delete(piece);
            done += n;
        }
    }

    public void Dispose()
    {
        if (Environment.GetEnvironmentVariable("KEEP_TEST_DATA") == "1") return;
        Rbd("rm", "--no-progress", Spec);
    }
}
