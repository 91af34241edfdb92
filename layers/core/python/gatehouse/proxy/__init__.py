"""Protocol proxies: any client of a target's own protocol goes through Gatehouse's decision path."""
