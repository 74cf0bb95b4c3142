//! The command table: every command the server knows, with its arity as
//! Redis states it (the name counts; a negative arity is a minimum), so
//! unknown commands and wrong argument counts are answered in one place,
//! before a command runs or is queued in a transaction.

/// A known command.
#[derive(Debug)]
pub struct Command {
    /// The name, upper case.
    pub name: &'static str,
    /// Arguments including the name: `n` exactly, or at least `-n` if negative.
    pub arity: i32,
    /// The name packed into one number ([`pack`]), for a fast lookup.
    key: u128,
}

/// `name` (at most 16 bytes), upper case, in one number, big-endian and
/// zero-padded: names sort as their numbers do.
const fn pack(name: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < MAX_NAME {
        let b = if i < name.len() { name[i].to_ascii_uppercase() } else { 0 };
        key = key << 8 | b as u128;
        i += 1;
    }
    key
}

macro_rules! table {
    ($($name:literal $arity:literal),* $(,)?) => {
        /// Every command, sorted by name (checked by a test).
        pub const COMMANDS: &[Command] = &[$(Command { name: $name, arity: $arity, key: pack($name.as_bytes()) }),*];
    };
}

table! {
    "APPEND" 3, "CLIENT" -2, "COMMAND" -1, "CONFIG" -2, "DBSIZE" 1, "DECR" 2, "DECRBY" 3,
    "DEL" -2, "DISCARD" 1, "ECHO" 2, "EXEC" 1, "EXISTS" -2, "EXPIRE" 3, "FLUSHALL" -1, "FLUSHDB" -1,
    "GET" 2, "GETRANGE" 4, "GETSET" 3, "HDEL" -3, "HEXISTS" 3, "HGET" 3, "HGETALL" 2, "HINCRBY" 4,
    "HLEN" 2, "HMSET" -4, "HSCAN" -3, "HSET" -4, "INCR" 2, "INCRBY" 3, "INCRBYFLOAT" 3, "INFO" -1,
    "KEYS" 2, "LINDEX" 3, "LLEN" 2, "LPOP" -2, "LPUSH" -3, "LRANGE" 4, "LSET" 4, "MGET" -2,
    "MSET" -3, "MULTI" 1, "PERSIST" 2, "PEXPIRE" 3, "PING" -1, "PSETEX" 4, "PTTL" 2, "QUIT" -1,
    "RPOP" -2, "RPUSH" -3, "SADD" -3, "SCAN" -2, "SCARD" 2, "SELECT" 2, "SET" -3, "SETEX" 4,
    "SETNX" 3, "SETRANGE" 4, "SISMEMBER" 3, "SMEMBERS" 2, "SPOP" -2, "SREM" -3, "SSCAN" -3,
    "STRLEN" 2, "TTL" 2, "TYPE" 2, "UNLINK" -2, "ZADD" -4, "ZCARD" 2, "ZPOPMAX" -2, "ZPOPMIN" -2,
    "ZRANGE" -4, "ZREM" -3, "ZSCORE" 3,
}

/// The longest command name.
const MAX_NAME: usize = 16;

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Command> {
    if name.len() > MAX_NAME {
        return None;
    }
    let key = pack(name);
    COMMANDS.binary_search_by(|c| c.key.cmp(&key)).ok().map(|i| &COMMANDS[i])
}

impl Command {
    /// Whether `argc` arguments (the name included) are right for it.
    pub fn accepts(&self, argc: usize) -> bool {
        if self.arity >= 0 { argc == self.arity as usize } else { argc >= self.arity.unsigned_abs() as usize }
    }
}

/// Redis's reply to a command it does not know: the name and the first
/// arguments, quoted, up to about 128 bytes.
pub fn unknown(args: &[&[u8]]) -> Vec<u8> {
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend(args[0].iter().take(128));
    msg.extend_from_slice(b"', with args beginning with: ");
    let mut shown = Vec::new();
    for a in &args[1..] {
        if shown.len() >= 128 {
            break;
        }
        let room = 128 - shown.len();
        shown.push(b'\'');
        shown.extend(a.iter().take(room));
        shown.extend_from_slice(b"' ");
    }
    msg.extend_from_slice(&shown);
    msg
}

/// Redis's reply to a known command with the wrong number of arguments.
pub fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_names_fit() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name && w[0].key < w[1].key), "sort the table");
        assert!(COMMANDS.iter().all(|c| c.name.len() <= MAX_NAME && c.name == c.name.to_ascii_uppercase()));
        assert_eq!(lookup(b"get").map(|c| c.name), Some("GET"));
        assert_eq!(lookup(b"IncrByFloat").map(|c| c.name), Some("INCRBYFLOAT"));
        assert!(lookup(b"nosuch").is_none() && lookup(&[b'x'; 40]).is_none());
    }

    #[test]
    fn arity() {
        let get = lookup(b"GET").unwrap();
        assert!(get.accepts(2) && !get.accepts(1) && !get.accepts(3));
        let set = lookup(b"SET").unwrap();
        assert!(set.accepts(3) && set.accepts(7) && !set.accepts(2));
    }

    #[test]
    fn unknown_commands_quote_their_arguments_as_redis_does() {
        let msg = unknown(&[b"FOO", b"a", b"b"]);
        assert_eq!(msg, b"ERR unknown command 'FOO', with args beginning with: 'a' 'b' ");
        assert_eq!(unknown(&[b"foo"]), b"ERR unknown command 'foo', with args beginning with: ");
        let long = [b'x'; 300];
        let msg = unknown(&[b"foo", &long, b"next"]);
        assert!(msg.ends_with(b"x' ") && !msg.windows(4).any(|w| w == b"next"));
    }
}
