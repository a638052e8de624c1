"""Taking uploads in: the CSV schema, the one intake every entry calls, the folder drop and the Launchpad's
sources."""
