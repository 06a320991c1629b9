// kvstore.thrift: a small key-value store, the service of examples/thrift_*.py.
//
// The same service as a msgpack schema is idl/kvstore.schema.toml.

struct Entry {
    1: string key,
    2: binary value,
    3: optional double expires,   // seconds since the epoch; unset means never
    4: list<string> tags,
}

exception KeyNotFound {
    1: string key,
}

exception StoreFull {
    1: i32 capacity,
}

service KVStore {
    // The value stored under key.
    binary get(1: string key) throws (1: KeyNotFound not_found),
    // Store value under key; returns whether the key was new.
    bool put(1: string key, 2: binary value, 3: list<string> tags) throws (1: StoreFull full),
    // Remove key (a missing key is not an error).
    void remove(1: string key),
    // Every entry whose key starts with prefix, sorted by key.
    list<Entry> scan(1: string prefix),
    // How many entries there are.
    i32 size(),
    // Forget everything; the caller does not wait for a result.
    oneway void clear(),
}
