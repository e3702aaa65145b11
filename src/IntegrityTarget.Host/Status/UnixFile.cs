using System.Runtime.InteropServices;

namespace IntegrityTarget.Host.Status;

/// <summary>
/// lstat(2) for the two facts the status socket needs and .NET does not expose: whether a path is a
/// socket, and which file (device and inode) it is, so a process removes only the socket it created.
/// </summary>
internal static partial class UnixFile
{
    public readonly record struct Identity(ulong Device, ulong Inode, bool IsSocket);

    private const uint S_IFMT = 0xF000, S_IFSOCK = 0xC000;

    [LibraryImport("libc", EntryPoint = "lstat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static unsafe partial int LStat(string path, byte* buffer);

    /// <summary>The file at <paramref name="path"/> (not following a symlink), or null when there is none.</summary>
    public static unsafe Identity? Stat(string path)
    {
        // struct stat is 144 bytes on x86-64 and 128 on arm64; both start with st_dev and st_ino (8 bytes each).
        // st_mode follows st_nlink (8 bytes) on x86-64, and comes before a 4-byte st_nlink on arm64.
        byte* buf = stackalloc byte[256];
        if (LStat(path, buf) != 0) return null;
        int modeOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 24 : 16;
        uint mode = *(uint*)(buf + modeOffset);
        return new Identity(*(ulong*)buf, *(ulong*)(buf + 8), (mode & S_IFMT) == S_IFSOCK);
    }
}
