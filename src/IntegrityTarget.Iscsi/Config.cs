namespace IntegrityTarget.Iscsi;

/// <summary>CHAP user name and secret. The secret never appears in logs or <see cref="ToString"/>.</summary>
public sealed record ChapCredentials(string User, string Secret)
{
    public override string ToString() => $"ChapCredentials {{ User = {User}, Secret = *** }}";
}

/// <summary>One iSCSI target: its name, who may log in, and the SCSI layer serving its LUNs.</summary>
public sealed class IscsiTargetConfig
{
    public required string Iqn { get; init; }
    // Alias, ACL and CHAP may be replaced while served (reload); each is one reference, read once per login.
    public string? Alias { get; set; }
    public required IntegrityTarget.Scsi.IScsiTarget Scsi { get; init; }
    /// <summary>Initiator IQNs allowed to log in; empty or containing "*" means any.</summary>
    public IReadOnlyList<string> AllowedInitiators { get; set; } = [];
    /// <summary>When set, initiators must authenticate with CHAP using these credentials.</summary>
    public ChapCredentials? Chap { get; set; }
    /// <summary>Credentials the target uses to authenticate itself when the initiator asks (mutual CHAP).</summary>
    public ChapCredentials? MutualChap { get; set; }

    internal bool Allows(string initiatorName) =>
        AllowedInitiators.Count == 0 ||
        AllowedInitiators.Any(a => a == "*" || string.Equals(a, initiatorName, StringComparison.OrdinalIgnoreCase));
}

/// <summary>Our side of the operational parameters and connection housekeeping.</summary>
public sealed class IscsiServerOptions
{
    public int MaxRecvDataSegmentLength { get; init; } = 262144;
    public int MaxBurstLength { get; init; } = 1048576;
    public int FirstBurstLength { get; init; } = 65536;
    public bool ImmediateData { get; init; } = true;
    public bool InitialR2T { get; init; } = false;
    public int MaxOutstandingR2T { get; init; } = 8;
    /// <summary>Commands a session may have outstanding; advertised through MaxCmdSN.</summary>
    public int QueueDepth { get; init; } = 128;
    public TimeSpan NopInterval { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan NopTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public ChapCredentials? DiscoveryChap { get; init; }
    public ChapCredentials? DiscoveryMutualChap { get; init; }
    public ushort PortalGroupTag { get; init; } = 1;
    /// <summary>A connection that has not finished login in this time is closed.</summary>
    public TimeSpan LoginTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Largest expected data transfer length accepted for one write command (bounds buffers).</summary>
    public int MaxCommandDataLength { get; init; } = 64 * 1024 * 1024;
    /// <summary>
    /// Write-data buffers one connection may hold at once. A write that would exceed it is answered
    /// TASK SET FULL (the initiator retries), so a peer cannot make the target allocate without bound.
    /// </summary>
    public long MaxWriteBufferBytesPerConnection { get; init; } = 256L * 1024 * 1024;
    /// <summary>
    /// Connections held at once (logging in or logged in). One more is closed at once, so a flood of
    /// connections cannot use up the process's file descriptors; the host derives the default from
    /// RLIMIT_NOFILE.
    /// </summary>
    public int ConnectionLimit { get; init; } = 1024;
    /// <summary>
    /// Of those, connections still logging in: when a new one would exceed this, the one that has been
    /// logging in longest is closed, so idle or slow half-logins cannot crowd out real logins.
    /// </summary>
    public int PendingLoginLimit => Math.Max(8, ConnectionLimit / 4);
    /// <summary>
    /// The answer to a failed authentication waits this long, doubled with every further failure of the same
    /// initiator name or source address (up to <see cref="ChapFailureMaxDelay"/>); a CHAP success resets it.
    /// Zero turns the delay off.
    /// </summary>
    public TimeSpan ChapFailureDelay { get; init; } = TimeSpan.FromMilliseconds(500);
    public TimeSpan ChapFailureMaxDelay { get; init; } = TimeSpan.FromSeconds(16);
    /// <summary>
    /// Command data (write buffers, read data not yet sent) the whole process may hold at once; a command
    /// that does not fit is answered TASK SET FULL. See <see cref="InFlightBudget"/>.
    /// </summary>
    public long MaxInFlightBytes { get; init; } = 1L << 30;
    /// <summary>
    /// Read data one connection may have waiting to be sent. Beyond it the connection stops reading new
    /// commands until the initiator has taken some of its answers (back-pressure).
    /// </summary>
    public long MaxQueuedReadBytesPerConnection { get; init; } = 64L << 20;
    /// <summary>
    /// SCSI commands marked immediate (they bypass the CmdSN window) one connection may have outstanding;
    /// more are rejected with reason "immediate command reject" (RFC 7143 §11.17.1).
    /// </summary>
    public int MaxImmediateCommands { get; init; } = 16;

    /// <summary>Returns every problem with these options (empty when valid).</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (MaxRecvDataSegmentLength is < 512 or > 16777215) errors.Add($"MaxRecvDataSegmentLength must be 512..16777215, got {MaxRecvDataSegmentLength}");
        if (MaxBurstLength is < 512 or > 16777215) errors.Add($"MaxBurstLength must be 512..16777215, got {MaxBurstLength}");
        if (FirstBurstLength < 512 || FirstBurstLength > MaxBurstLength) errors.Add($"FirstBurstLength must be 512..MaxBurstLength ({MaxBurstLength}), got {FirstBurstLength}");
        if (MaxOutstandingR2T is < 1 or > 65535) errors.Add($"MaxOutstandingR2T must be 1..65535, got {MaxOutstandingR2T}");
        if (QueueDepth is < 1 or > 65536) errors.Add($"QueueDepth must be 1..65536, got {QueueDepth}");
        if (NopInterval <= TimeSpan.Zero) errors.Add("NopInterval must be positive");
        if (NopTimeout <= TimeSpan.Zero) errors.Add("NopTimeout must be positive");
        if (MaxCommandDataLength < MaxBurstLength) errors.Add($"MaxCommandDataLength must be at least MaxBurstLength ({MaxBurstLength})");
        if (MaxWriteBufferBytesPerConnection < MaxCommandDataLength) errors.Add($"MaxWriteBufferBytesPerConnection must be at least MaxCommandDataLength ({MaxCommandDataLength})");
        if (ConnectionLimit < 1) errors.Add($"ConnectionLimit must be at least 1, got {ConnectionLimit}");
        if (MaxInFlightBytes < MaxBurstLength) errors.Add($"MaxInFlightBytes must be at least MaxBurstLength ({MaxBurstLength}), got {MaxInFlightBytes}");
        if (MaxQueuedReadBytesPerConnection < MaxBurstLength) errors.Add($"MaxQueuedReadBytesPerConnection must be at least MaxBurstLength ({MaxBurstLength})");
        if (MaxImmediateCommands < 1) errors.Add($"MaxImmediateCommands must be at least 1, got {MaxImmediateCommands}");
        if (ChapFailureDelay < TimeSpan.Zero || ChapFailureMaxDelay < ChapFailureDelay)
            errors.Add($"ChapFailureDelay must be at least 0 and at most ChapFailureMaxDelay ({ChapFailureMaxDelay.TotalSeconds} s)");
        return errors;
    }
}

/// <summary>A snapshot of one session for status output.</summary>
public sealed record SessionInfo(
    string Target,
    string Initiator,
    string Isid,
    ushort Tsih,
    bool Discovery,
    int Connections,
    int CommandsInFlight,
    string? Remote);
