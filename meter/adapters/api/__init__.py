"""The HTTP API (`meter api`): current usage from the quota feed, history from the store."""
