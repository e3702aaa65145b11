using System.Text;

namespace IntegrityTarget.Iscsi.Session;

/// <summary>SAM LUN structure ↔ flat LUN number, and the iSCSI names/TransportID of a nexus.</summary>
public static class LunAddress
{
    /// <summary>Flat number returned for addressing methods we do not decode; no LUN has it.</summary>
    public const ulong Unsupported = ulong.MaxValue;

    /// <summary>Decodes peripheral (00b) and flat (01b) single-level LUNs; other methods map to <see cref="Unsupported"/>.</summary>
    public static ulong Decode(ulong lunField)
    {
        var b0 = (byte)(lunField >> 56);
        var b1 = (byte)(lunField >> 48);
        if ((lunField & 0x0000_ffff_ffff_ffffUL) != 0) return Unsupported; // second-level LUNs
        return (b0 >> 6) switch
        {
            0 or 1 => (ulong)(((b0 & 0x3f) << 8) | b1),
            _ => Unsupported,
        };
    }

    /// <summary>Peripheral addressing below 256, flat addressing up to 16383.</summary>
    public static ulong Encode(ulong lun) =>
        lun < 256 ? lun << 48 : ((0x4000UL | (lun & 0x3fff)) << 48);

    public static string IsidHex(ulong isid) => isid.ToString("x12");

    public static string InitiatorPortName(string initiator, ulong isid) => $"{initiator},i,0x{IsidHex(isid)}";

    public static string TargetPortName(string target, ushort tpgt) => $"{target},t,0x{tpgt:x4}";

    /// <summary>SPC-4 iSCSI TransportID, format 01b (protocol id 5): the initiator port name, NUL-terminated, padded to 4.</summary>
    public static byte[] TransportId(string initiatorPortName)
    {
        var name = Encoding.UTF8.GetBytes(initiatorPortName);
        int additional = (name.Length + 1 + 3) & ~3;
        if (additional < 20) additional = 20;
        var id = new byte[4 + additional];
        id[0] = 0x40 | 0x05;
        id[2] = (byte)(additional >> 8);
        id[3] = (byte)additional;
        name.CopyTo(id, 4);
        return id;
    }
}
