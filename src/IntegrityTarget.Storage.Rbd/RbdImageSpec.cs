namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// An RBD image named by a LUN path: <c>rbd:POOL/IMAGE</c> or <c>rbd:POOL/NAMESPACE/IMAGE</c> (the same
/// POOL[/NAMESPACE]/IMAGE spec the rbd command takes, behind the scheme that tells it from a file path).
/// </summary>
public sealed record RbdImageSpec(string Pool, string? Namespace, string Image)
{
    public const string Scheme = "rbd:";

    /// <summary>"rbd/vm1" (or "rbd/ns/vm1"): the spec as the rbd command prints it.</summary>
    public string Display => Namespace is null ? $"{Pool}/{Image}" : $"{Pool}/{Namespace}/{Image}";

    /// <summary>"rbd:rbd/vm1": the canonical LUN path.</summary>
    public override string ToString() => Scheme + Display;

    /// <summary>Whether the path names an RBD image at all (then <see cref="TryParse"/> says whether it is well formed).</summary>
    public static bool IsRbdPath(string? path) => path != null && path.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    public static bool TryParse(string path, out RbdImageSpec spec, out string error)
    {
        spec = null!;
        if (!IsRbdPath(path)) { error = $"'{path}' does not start with {Scheme}"; return false; }
        var parts = path[Scheme.Length..].Split('/');
        if (parts.Length is < 2 or > 3 || parts.Any(p => p.Length == 0))
        {
            error = $"'{path}' is not {Scheme}POOL/IMAGE or {Scheme}POOL/NAMESPACE/IMAGE (e.g. {Scheme}rbd/vm1)";
            return false;
        }
        foreach (var p in parts)
        {
            if (p.Any(c => char.IsControl(c) || char.IsWhiteSpace(c)))
            {
                error = $"'{path}': pool, namespace and image names cannot contain spaces or control characters";
                return false;
            }
        }
        if (parts[^1].Contains('@'))
        {
            error = $"'{path}': snapshots (IMAGE@SNAP) cannot be served; clone or export the snapshot first";
            return false;
        }
        spec = parts.Length == 2 ? new RbdImageSpec(parts[0], null, parts[1]) : new RbdImageSpec(parts[0], parts[1], parts[2]);
        error = "";
        return true;
    }

    public static RbdImageSpec Parse(string path) =>
        TryParse(path, out var spec, out var error) ? spec : throw new ArgumentException(error, nameof(path));
}
