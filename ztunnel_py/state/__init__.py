"""The mesh as a proxy sees it, shared by the node agent and waypoints: `mesh.ProxyState`
(workloads, services, endpoints, policies) and `feed.StateFeed`, the xDS handler that keeps it
current."""
