"""Entity store (actions) and activation store, over CouchDB or an embedded store."""
