"""AdminService: a tenant's administration (API keys), served by the Gateway."""
