using IntegrityTarget.Tests.Shared;

namespace IntegrityTarget.Integration.Tests;

/// <summary>Stops a ceph-mini cluster this test run started for itself (none when CEPH_CONF named one).</summary>
[SetUpFixture]
public class CephLifetime
{
    [OneTimeTearDown] public void Stop() => CephTestCluster.StopIfStarted();
}
