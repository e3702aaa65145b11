using System.Text;
using IntegrityTarget.Storage.Rbd.Native;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// One key of an image's metadata as a durable record (e.g. a shared LUN's persistent reservations): text
/// (UTF-8 without NUL, as librbd stores a C string), replaced atomically by one header update.
/// </summary>
internal sealed unsafe class RbdMetadataRecord(RbdBlockDevice device, string key) : IDurableRecord
{
    public string Name => $"{device.Name} metadata {key}";

    public byte[]? Read() => device.WithImage(image =>
    {
        nuint len = 256;
        while (true)
        {
            var buf = new byte[(int)len];
            int rc;
            fixed (byte* p = buf) rc = Librbd.rbd_metadata_get(image, key, p, ref len);
            if (rc == -CephError.ENOENT) return null;
            if (rc == -CephError.ERANGE) continue; // len now holds the size needed
            if (rc < 0) throw CephError.Fail(CephOperation.Read, rc, Name);
            int n = Array.IndexOf(buf, (byte)0);
            return buf.AsSpan(0, n < 0 ? (int)Math.Min(len, (nuint)buf.Length) : n).ToArray();
        }
    });

    public void Write(ReadOnlySpan<byte> value)
    {
        if (value.IndexOf((byte)0) >= 0) throw new ArgumentException("an RBD metadata value cannot hold a NUL byte", nameof(value));
        string text = Encoding.UTF8.GetString(value);
        int rc = device.WithImage(image => Librbd.rbd_metadata_set(image, key, text));
        if (rc < 0) throw CephError.Fail(CephOperation.Write, rc, Name);
    }

    public void Delete()
    {
        int rc = device.WithImage(image => Librbd.rbd_metadata_remove(image, key));
        if (rc < 0 && rc != -CephError.ENOENT) throw CephError.Fail(CephOperation.Write, rc, Name);
    }
}
