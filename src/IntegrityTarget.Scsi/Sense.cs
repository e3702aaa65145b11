namespace IntegrityTarget.Scsi;

/// <summary>
/// Why a command did not complete with GOOD. Handlers return one of these; <see cref="SenseTable"/>
/// maps it to status/key/ASC/ASCQ and <see cref="SenseBuilder"/> turns it into sense bytes in one place.
/// </summary>
public enum SenseReason : byte
{
    None = 0,
    InvalidOpcode,
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    ParameterListLengthError,
    LbaOutOfRange,
    LogicalUnitNotSupported,
    SavingParametersNotSupported,
    InvalidReleaseOfPersistentReservation,
    MediumRemovalPrevented,
    UnrecoveredReadError,
    WriteError,
    InternalTargetFailure,
    Miscompare,
    WriteProtected,
    SpaceAllocationFailed,
    PowerOnReset,
    ScsiBusReset,
    BusDeviceReset,
    ModeParametersChanged,
    ReservationsPreempted,
    ReservationsReleased,
    RegistrationsPreempted,
    CapacityChanged,
    AsymmetricAccessStateChanged,
    NotAccessibleTransitioning,
    NotAccessibleStandby,
    NotAccessibleUnavailable,
    CommandsClearedByAnotherInitiator,
    ReservationConflict,
    TaskAborted,
    // Transport-detected failures of a command's data phase (the iSCSI Data-Out checks): ABORTED COMMAND
    UnexpectedUnsolicitedData,
    DataPhaseError,
    DataOffsetError,
    TooMuchWriteData,
    ProtocolServiceCrcError,
    // EXTENDED COPY parameter list checks (SPC-4 6.4.3): ILLEGAL REQUEST
    TooManyTargetDescriptors,
    UnsupportedTargetDescriptorType,
    TooManySegmentDescriptors,
    UnsupportedSegmentDescriptorType,
    OperationInProgress,
    // EXTENDED COPY segment processing (SPC-4 6.4.5): COPY ABORTED, with the segment number in
    // COMMAND-SPECIFIC INFORMATION and, where one block is to blame, its LBA in INFORMATION
    CopyTargetNotReachable,
    CopyTargetIncorrectType,
    CopySourceReadError,
    CopyDestinationWriteError,
    CopyDestinationWriteProtected,
    CopyDestinationSpaceAllocationFailed,
    ReportedLunsDataChanged,
}

/// <summary>
/// A reason plus what the sense data must point at: the INFORMATION field (an LBA or a byte offset)
/// and, for invalid-field errors, the byte/bit of the CDB or parameter list (sense-key specific field).
/// </summary>
public readonly record struct ScsiError(SenseReason Reason, ulong Information = 0, bool HasInformation = false,
    int FieldByte = -1, int FieldBit = -1, uint? CommandSpecific = null)
{
    public static readonly ScsiError None = default;
    public bool IsError => Reason != SenseReason.None;

    public static ScsiError Cdb(int byteIndex, int bit = -1) => new(SenseReason.InvalidFieldInCdb, FieldByte: byteIndex, FieldBit: bit);
    public static ScsiError Param(int byteIndex, int bit = -1) => new(SenseReason.InvalidFieldInParameterList, FieldByte: byteIndex, FieldBit: bit);
    public static ScsiError Of(SenseReason r) => new(r);
    public static ScsiError WithInfo(SenseReason r, ulong info) => new(r, info, true);
    /// <summary>An EXTENDED COPY failure in segment <paramref name="segment"/>, naming <paramref name="lba"/> when one block is to blame.</summary>
    public static ScsiError Copy(SenseReason r, uint segment, ulong? lba = null) =>
        new(r, lba ?? 0, lba.HasValue, CommandSpecific: segment);
    public static readonly ScsiError OutOfRange = new(SenseReason.LbaOutOfRange);
    public static readonly ScsiError Conflict = new(SenseReason.ReservationConflict);
}

/// <summary>One row of the reason→sense table.</summary>
public readonly record struct SenseEntry(byte Status, byte Key, byte Asc, byte Ascq);

public static class SenseKey
{
    public const byte NoSense = 0x0, NotReady = 0x2, MediumError = 0x3, HardwareError = 0x4, IllegalRequest = 0x5,
        UnitAttention = 0x6, DataProtect = 0x7, CopyAborted = 0xA, AbortedCommand = 0xB, Miscompare = 0xE;
}

/// <summary>The reason→sense table (SPC-4 4.5.6 / Annex D codes).</summary>
public static class SenseTable
{
    private static readonly SenseEntry[] Entries = Build();

    private static SenseEntry[] Build()
    {
        var t = new SenseEntry[Enum.GetValues<SenseReason>().Length];
        const byte cc = ScsiStatus.CheckCondition;
        void Set(SenseReason r, byte key, byte asc, byte ascq, byte status = cc) => t[(int)r] = new SenseEntry(status, key, asc, ascq);
        Set(SenseReason.None, SenseKey.NoSense, 0, 0, ScsiStatus.Good);
        Set(SenseReason.InvalidOpcode, SenseKey.IllegalRequest, 0x20, 0x00);
        Set(SenseReason.InvalidFieldInCdb, SenseKey.IllegalRequest, 0x24, 0x00);
        Set(SenseReason.InvalidFieldInParameterList, SenseKey.IllegalRequest, 0x26, 0x00);
        Set(SenseReason.ParameterListLengthError, SenseKey.IllegalRequest, 0x1A, 0x00);
        Set(SenseReason.LbaOutOfRange, SenseKey.IllegalRequest, 0x21, 0x00);
        Set(SenseReason.LogicalUnitNotSupported, SenseKey.IllegalRequest, 0x25, 0x00);
        Set(SenseReason.SavingParametersNotSupported, SenseKey.IllegalRequest, 0x39, 0x00);
        Set(SenseReason.InvalidReleaseOfPersistentReservation, SenseKey.IllegalRequest, 0x26, 0x04);
        Set(SenseReason.MediumRemovalPrevented, SenseKey.IllegalRequest, 0x53, 0x02);
        Set(SenseReason.UnrecoveredReadError, SenseKey.MediumError, 0x11, 0x00);
        Set(SenseReason.WriteError, SenseKey.MediumError, 0x0C, 0x00);
        Set(SenseReason.InternalTargetFailure, SenseKey.HardwareError, 0x44, 0x00);
        Set(SenseReason.Miscompare, SenseKey.Miscompare, 0x1D, 0x00);
        Set(SenseReason.WriteProtected, SenseKey.DataProtect, 0x27, 0x00);
        Set(SenseReason.SpaceAllocationFailed, SenseKey.DataProtect, 0x27, 0x07);
        Set(SenseReason.PowerOnReset, SenseKey.UnitAttention, 0x29, 0x00);
        Set(SenseReason.ScsiBusReset, SenseKey.UnitAttention, 0x29, 0x02);
        Set(SenseReason.BusDeviceReset, SenseKey.UnitAttention, 0x29, 0x03);
        Set(SenseReason.ModeParametersChanged, SenseKey.UnitAttention, 0x2A, 0x01);
        Set(SenseReason.ReservationsPreempted, SenseKey.UnitAttention, 0x2A, 0x03);
        Set(SenseReason.ReservationsReleased, SenseKey.UnitAttention, 0x2A, 0x04);
        Set(SenseReason.RegistrationsPreempted, SenseKey.UnitAttention, 0x2A, 0x05);
        Set(SenseReason.CapacityChanged, SenseKey.UnitAttention, 0x2A, 0x09);
        Set(SenseReason.AsymmetricAccessStateChanged, SenseKey.UnitAttention, 0x2A, 0x06);
        Set(SenseReason.NotAccessibleTransitioning, SenseKey.NotReady, 0x04, 0x0A);
        Set(SenseReason.NotAccessibleStandby, SenseKey.NotReady, 0x04, 0x0B);
        Set(SenseReason.NotAccessibleUnavailable, SenseKey.NotReady, 0x04, 0x0C);
        Set(SenseReason.CommandsClearedByAnotherInitiator, SenseKey.UnitAttention, 0x2F, 0x00);
        Set(SenseReason.ReservationConflict, 0, 0, 0, ScsiStatus.ReservationConflict);
        Set(SenseReason.TaskAborted, 0, 0, 0, ScsiStatus.TaskAborted);
        Set(SenseReason.UnexpectedUnsolicitedData, SenseKey.AbortedCommand, 0x0C, 0x0C);
        Set(SenseReason.DataPhaseError, SenseKey.AbortedCommand, 0x4B, 0x00);
        Set(SenseReason.DataOffsetError, SenseKey.AbortedCommand, 0x4B, 0x05);
        Set(SenseReason.TooMuchWriteData, SenseKey.AbortedCommand, 0x4B, 0x02);
        Set(SenseReason.ProtocolServiceCrcError, SenseKey.AbortedCommand, 0x47, 0x05);
        Set(SenseReason.TooManyTargetDescriptors, SenseKey.IllegalRequest, 0x26, 0x06);
        Set(SenseReason.UnsupportedTargetDescriptorType, SenseKey.IllegalRequest, 0x26, 0x07);
        Set(SenseReason.TooManySegmentDescriptors, SenseKey.IllegalRequest, 0x26, 0x08);
        Set(SenseReason.UnsupportedSegmentDescriptorType, SenseKey.IllegalRequest, 0x26, 0x09);
        Set(SenseReason.OperationInProgress, SenseKey.IllegalRequest, 0x00, 0x16);
        Set(SenseReason.CopyTargetNotReachable, SenseKey.CopyAborted, 0x0D, 0x02);
        Set(SenseReason.CopyTargetIncorrectType, SenseKey.CopyAborted, 0x0D, 0x03);
        Set(SenseReason.CopySourceReadError, SenseKey.CopyAborted, 0x11, 0x00);
        Set(SenseReason.CopyDestinationWriteError, SenseKey.CopyAborted, 0x0C, 0x00);
        Set(SenseReason.CopyDestinationWriteProtected, SenseKey.CopyAborted, 0x27, 0x00);
        Set(SenseReason.CopyDestinationSpaceAllocationFailed, SenseKey.CopyAborted, 0x27, 0x07);
        Set(SenseReason.ReportedLunsDataChanged, SenseKey.UnitAttention, 0x3F, 0x0E);
        return t;
    }

    public static SenseEntry Get(SenseReason r) => Entries[(int)r];
}

/// <summary>Builds sense data from a <see cref="ScsiError"/>: the only place sense bytes are produced.</summary>
public static class SenseBuilder
{
    public const int FixedLength = 18;

    /// <summary>NO SENSE / NO ADDITIONAL SENSE INFORMATION, for REQUEST SENSE with nothing to report.</summary>
    public static byte[] NoSense(bool descriptor)
    {
        if (descriptor) return [0x72, 0, 0, 0, 0, 0, 0, 0];
        var s = new byte[FixedLength];
        s[0] = 0x70; s[7] = FixedLength - 8;
        return s;
    }

    /// <summary>
    /// Fixed format (0x70) unless <paramref name="descriptor"/> (D_SENSE / DESC bit) or the INFORMATION
    /// value does not fit the fixed format's 32 bits; then descriptor format (0x72).
    /// Returns an empty array for reasons that carry no sense (GOOD, RESERVATION CONFLICT).
    /// </summary>
    public static byte[] Build(in ScsiError e, bool descriptor)
    {
        var entry = SenseTable.Get(e.Reason);
        if (entry.Status != ScsiStatus.CheckCondition) return [];
        bool desc = descriptor || (e.HasInformation && e.Information > uint.MaxValue);
        bool sks = e.FieldByte >= 0 && e.Reason is SenseReason.InvalidFieldInCdb or SenseReason.InvalidFieldInParameterList;
        byte sksByte0 = 0;
        if (sks)
        {
            sksByte0 = 0x80;
            if (e.Reason == SenseReason.InvalidFieldInCdb) sksByte0 |= 0x40; // C/D: error is in the CDB
            if (e.FieldBit >= 0) sksByte0 |= (byte)(0x08 | (e.FieldBit & 7));
        }
        if (!desc)
        {
            var s = new byte[FixedLength];
            s[0] = (byte)(0x70 | (e.HasInformation ? 0x80 : 0));
            s[2] = entry.Key;
            if (e.HasInformation) System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(s.AsSpan(3), (uint)e.Information);
            s[7] = FixedLength - 8;
            if (e.CommandSpecific is { } cs) System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(s.AsSpan(8), cs);
            s[12] = entry.Asc; s[13] = entry.Ascq;
            if (sks)
            {
                s[15] = sksByte0;
                System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(s.AsSpan(16), (ushort)e.FieldByte);
            }
            return s;
        }
        int len = 8 + (e.HasInformation ? 12 : 0) + (e.CommandSpecific.HasValue ? 12 : 0) + (sks ? 8 : 0);
        var d = new byte[len];
        d[0] = 0x72; d[1] = entry.Key; d[2] = entry.Asc; d[3] = entry.Ascq; d[7] = (byte)(len - 8);
        int p = 8;
        if (e.HasInformation)
        {
            d[p] = 0x00; d[p + 1] = 0x0A; d[p + 2] = 0x80;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(p + 4), e.Information);
            p += 12;
        }
        if (e.CommandSpecific is { } csi)
        {
            d[p] = 0x01; d[p + 1] = 0x0A; // command-specific information descriptor
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(p + 4), csi);
            p += 12;
        }
        if (sks)
        {
            d[p] = 0x02; d[p + 1] = 0x06; d[p + 4] = sksByte0;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(d.AsSpan(p + 5), (ushort)e.FieldByte);
        }
        return d;
    }
}
