"""Authorization: SMART scopes, token checking and the caller a token stands for."""
