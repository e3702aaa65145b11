using IntegrityTarget.Benchmarks;

// Benchmarks entry point: `dotnet run -c Release --project tests/IntegrityTarget.Benchmarks -- volume [--size-mib N] [--dir DIR]`.
if (args.Length > 0 && args[0] == "readprof") return await ReadProfile.RunAsync(args[1..]);
if (args.Length > 0 && args[0] == "tags") return VolumeBenchmark.TagSpeed();
if (args.Length > 0 && args[0] == "volume") return await VolumeBenchmark.RunAsync(args[1..]);
if (args.Length > 0 && args[0] == "laps") return await LapsBenchmark.RunAsync(args[1..]);
if (args.Length > 0 && args[0] == "rbd") return await RbdDeviceBenchmark.RunAsync(args[1..]);
Console.Error.WriteLine("usage: IntegrityTarget.Benchmarks volume [--size-mib 512] [--dir /var/tmp] [--seconds 3] [--rounds 1] [--window-mib N] [--algorithms crc32c,hmac-sha256] [--raw-synced true]\n       IntegrityTarget.Benchmarks rbd CEPH_CONF [--seconds 5] [--size-mib 256] [--set OPTION=VALUE ...]");
return 2;
