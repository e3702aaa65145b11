namespace IntegrityTarget.Storage;

/// <summary>
/// A tiny seeded generator (splitmix64). Crash simulation and crash tests use it instead of
/// <see cref="Random"/> because its output is fixed by the algorithm, so a seed printed in a failure
/// reproduces the same crash on any runtime version. Each user owns its own instance (no shared state).
/// </summary>
public struct SplitMix64
{
    private ulong _state;

    public SplitMix64(ulong seed) => _state = seed;

    /// <summary>The finalizer of splitmix64: a stateless bijective mix, used to derive independent decisions from (seed, key).</summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A decision value for <paramref name="key"/> under <paramref name="seed"/>, independent of call order.</summary>
    public static ulong Hash(ulong seed, ulong key) => Mix(seed + 0x9E3779B97F4A7C15UL * (key + 1) ^ Mix(key));

    /// <summary>Maps a 64-bit hash to [0, 1).</summary>
    public static double ToUnit(ulong h) => (h >> 11) * (1.0 / (1UL << 53));

    public ulong Next()
    {
        _state += 0x9E3779B97F4A7C15UL;
        return Mix(_state);
    }

    /// <summary>Uniform in [0, <paramref name="maxExclusive"/>); 0 when the bound is 0.</summary>
    public ulong Next(ulong maxExclusive) => maxExclusive == 0 ? 0 : Next() % maxExclusive;

    /// <summary>Uniform in [<paramref name="min"/>, <paramref name="maxInclusive"/>].</summary>
    public int NextInt(int min, int maxInclusive) => min + (int)Next((ulong)(maxInclusive - min + 1));

    public double NextDouble() => ToUnit(Next());

    public bool Chance(double p) => NextDouble() < p;
}
