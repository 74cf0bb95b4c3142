//! The data set and the commands: strings (with expiry), lists, sets,
//! hashes and sorted sets, as far as `redis-benchmark` and `redis-cli`
//! use them, plus the server commands those clients ask for.

use crate::resp;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// A sorted-set score with a total order (NaN is refused on input).
#[derive(Clone, Copy, Debug)]
struct Score(f64);
impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Default)]
struct SortedSet {
    scores: HashMap<Vec<u8>, f64>,
    order: BTreeSet<(Score, Vec<u8>)>,
}

impl SortedSet {
    /// Sets `member`'s score; true if it is new.
    fn insert(&mut self, member: &[u8], score: f64) -> bool {
        let old = self.scores.insert(member.to_vec(), score);
        if let Some(old) = old {
            self.order.remove(&(Score(old), member.to_vec()));
        }
        self.order.insert((Score(score), member.to_vec()));
        old.is_none()
    }

    fn pop_min(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.order.pop_first()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }

    fn pop_max(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.order.pop_last()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }

    fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(s) => self.order.remove(&(Score(s), member.to_vec())),
            None => false,
        }
    }
}

enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Set(HashSet<Vec<u8>>),
    Hash(HashMap<Vec<u8>, Vec<u8>>),
    ZSet(SortedSet),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::Hash(_) => "hash",
            Value::ZSet(_) => "zset",
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::ZSet(z) => z.scores.is_empty(),
        }
    }
}

struct Item {
    value: Value,
    /// Milliseconds of the monotonic clock after which the key is gone.
    expires_ms: Option<u64>,
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Go on reading requests.
    Continue,
    /// Send the replies, then close (QUIT).
    Close,
}

/// Server facts that `INFO` reports.
#[derive(Default, Clone, Copy)]
pub struct ServerInfo {
    /// The port the server listens on.
    pub port: u16,
    /// Connected clients.
    pub clients: usize,
    /// Commands processed.
    pub commands: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// The data set.
pub struct Store {
    map: HashMap<Vec<u8>, Item>,
    rng: u64,
}

impl Default for Store {
    fn default() -> Store {
        Store { map: HashMap::new(), rng: 0x9e37_79b9_7f4a_7c15 }
    }
}

fn int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn float(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    let v = match s.to_ascii_lowercase().as_str() {
        "+inf" | "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

fn format_float(v: f64) -> Vec<u8> {
    if v.is_infinite() {
        return if v > 0.0 { b"inf".to_vec() } else { b"-inf".to_vec() };
    }
    format!("{v}").into_bytes()
}

fn wrong_args(out: &mut Vec<u8>, name: &str) {
    resp::error(out, &format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()));
}

/// `start..=stop` (Redis index rules, negative from the end) clamped to `len`.
fn index_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 { (len + start).max(0) } else { start };
    let stop = if stop < 0 { len + stop } else { stop.min(len - 1) };
    (start <= stop && start < len).then_some((start as usize, stop as usize))
}

impl Store {
    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Item> {
        if self.map.get(key).is_some_and(|i| i.expires_ms.is_some_and(|e| e <= now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The value at `key`, created by `make` if absent; `None` if it holds another type.
    fn value_or<'a>(&'a mut self, key: &[u8], now: u64, make: impl FnOnce() -> Value) -> &'a mut Value {
        if self.live(key, now).is_none() {
            self.map.insert(key.to_vec(), Item { value: make(), expires_ms: None });
        }
        &mut self.map.get_mut(key).expect("inserted above").value
    }

    fn drop_if_empty(&mut self, key: &[u8]) {
        if self.map.get(key).is_some_and(|i| i.value.is_empty()) {
            self.map.remove(key);
        }
    }

    /// Runs the command `args` (name first) at time `now` (ms) and appends its reply to `out`.
    pub fn execute(&mut self, args: &[&[u8]], now: u64, info: &ServerInfo, out: &mut Vec<u8>) -> After {
        let Some(name) = args.first() else {
            return After::Continue; // an empty inline line: no reply, as in Redis.
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let a = &args[1..];
        macro_rules! need {
            ($ok:expr) => {
                if !$ok {
                    wrong_args(out, &name);
                    return After::Continue;
                }
            };
        }
        match name.as_str() {
            "PING" => {
                need!(a.len() <= 1);
                match a.first() {
                    Some(m) => resp::bulk(out, m),
                    None => resp::simple(out, "PONG"),
                }
            }
            "ECHO" => {
                need!(a.len() == 1);
                resp::bulk(out, a[0]);
            }
            "QUIT" => {
                resp::simple(out, "OK");
                return After::Close;
            }
            "SELECT" => {
                need!(a.len() == 1);
                if int(a[0]) == Some(0) {
                    resp::simple(out, "OK")
                } else {
                    resp::error(out, "ERR DB index is out of range")
                }
            }
            "GET" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, string, resp::null, |s, out| resp::bulk(out, s));
            }
            "SET" => {
                need!(a.len() >= 2);
                self.set(a, now, out);
            }
            "SETEX" | "PSETEX" => {
                need!(a.len() == 3);
                let unit = if name == "SETEX" { 1000 } else { 1 };
                match int(a[1]).filter(|&t| t > 0) {
                    Some(t) => {
                        let expires = now.saturating_add((t as u64).saturating_mul(unit));
                        self.map.insert(
                            a[0].to_vec(),
                            Item { value: Value::Str(a[2].to_vec()), expires_ms: Some(expires) },
                        );
                        resp::simple(out, "OK");
                    }
                    None => {
                        resp::error(out, &format!("ERR invalid expire time in '{}' command", name.to_ascii_lowercase()))
                    }
                }
            }
            "GETSET" => {
                need!(a.len() == 2);
                let old = match self.live(a[0], now).map(|i| &i.value) {
                    Some(Value::Str(s)) => Some(s.clone()),
                    Some(_) => return self.reply_err(out, WRONGTYPE),
                    None => None,
                };
                self.map.insert(a[0].to_vec(), Item { value: Value::Str(a[1].to_vec()), expires_ms: None });
                match old {
                    Some(s) => resp::bulk(out, &s),
                    None => resp::null(out),
                }
            }
            "MSET" => {
                need!(!a.is_empty() && a.len() & 1 == 0);
                for kv in a.chunks(2) {
                    self.map.insert(kv[0].to_vec(), Item { value: Value::Str(kv[1].to_vec()), expires_ms: None });
                }
                resp::simple(out, "OK");
            }
            "MGET" => {
                need!(!a.is_empty());
                resp::array(out, a.len());
                for k in a {
                    match self.live(k, now).map(|i| &i.value) {
                        Some(Value::Str(s)) => resp::bulk(out, s),
                        _ => resp::null(out),
                    }
                }
            }
            "APPEND" => {
                need!(a.len() == 2);
                match self.value_or(a[0], now, || Value::Str(Vec::new())) {
                    Value::Str(s) => {
                        s.extend_from_slice(a[1]);
                        let n = s.len() as i64;
                        resp::integer(out, n);
                    }
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "STRLEN" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, string, zero, |s, out| resp::integer(out, s.len() as i64));
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match name.as_str() {
                    "INCR" => {
                        need!(a.len() == 1);
                        Some(1)
                    }
                    "DECR" => {
                        need!(a.len() == 1);
                        Some(-1)
                    }
                    "INCRBY" => {
                        need!(a.len() == 2);
                        int(a[1])
                    }
                    _ => {
                        need!(a.len() == 2);
                        int(a[1]).and_then(i64::checked_neg)
                    }
                };
                let Some(by) = by else { return self.reply_err(out, NOT_INTEGER) };
                self.incr(a[0], by, now, out);
            }
            "INCRBYFLOAT" => {
                need!(a.len() == 2);
                let Some(by) = float(a[1]) else { return self.reply_err(out, "ERR value is not a valid float") };
                match self.value_or(a[0], now, || Value::Str(b"0".to_vec())) {
                    Value::Str(s) => match float(s).map(|v| v + by).filter(|v| v.is_finite()) {
                        Some(v) => {
                            *s = format_float(v);
                            resp::bulk(out, s);
                        }
                        None => resp::error(out, "ERR value is not a valid float"),
                    },
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "DEL" | "UNLINK" => {
                need!(!a.is_empty());
                let n = a.iter().filter(|k| self.live(k, now).is_some() && self.map.remove(**k).is_some()).count();
                resp::integer(out, n as i64);
            }
            "EXISTS" => {
                need!(!a.is_empty());
                let n = a.iter().filter(|k| self.live(k, now).is_some()).count();
                resp::integer(out, n as i64);
            }
            "TYPE" => {
                need!(a.len() == 1);
                let t = self.live(a[0], now).map_or("none", |i| i.value.type_name());
                resp::simple(out, t);
            }
            "EXPIRE" | "PEXPIRE" => {
                need!(a.len() == 2);
                let Some(t) = int(a[1]) else { return self.reply_err(out, NOT_INTEGER) };
                let ms = if name == "EXPIRE" { t.saturating_mul(1000) } else { t };
                match self.live(a[0], now) {
                    None => resp::integer(out, 0),
                    Some(_) if ms <= 0 => {
                        self.map.remove(a[0]);
                        resp::integer(out, 1);
                    }
                    Some(item) => {
                        item.expires_ms = Some(now.saturating_add(ms as u64));
                        resp::integer(out, 1);
                    }
                }
            }
            "PERSIST" => {
                need!(a.len() == 1);
                let had = self.live(a[0], now).and_then(|i| i.expires_ms.take()).is_some();
                resp::integer(out, had as i64);
            }
            "TTL" | "PTTL" => {
                need!(a.len() == 1);
                let v = match self.live(a[0], now) {
                    None => -2,
                    Some(Item { expires_ms: None, .. }) => -1,
                    Some(Item { expires_ms: Some(e), .. }) => {
                        let left = e.saturating_sub(now) as i64;
                        if name == "TTL" { (left + 500) / 1000 } else { left }
                    }
                };
                resp::integer(out, v);
            }
            "KEYS" => {
                need!(a.len() == 1);
                if a[0] != b"*" {
                    return self.reply_err(out, "ERR only the pattern * is supported");
                }
                let keys: Vec<Vec<u8>> = self
                    .map
                    .iter()
                    .filter(|(_, i)| i.expires_ms.is_none_or(|e| e > now))
                    .map(|(k, _)| k.clone())
                    .collect();
                resp::array(out, keys.len());
                for k in &keys {
                    resp::bulk(out, k);
                }
            }
            "DBSIZE" => {
                need!(a.is_empty());
                resp::integer(out, self.map.len() as i64);
            }
            "FLUSHALL" | "FLUSHDB" => {
                self.map.clear();
                resp::simple(out, "OK");
            }
            "LPUSH" | "RPUSH" => {
                need!(a.len() >= 2);
                match self.value_or(a[0], now, || Value::List(VecDeque::new())) {
                    Value::List(l) => {
                        for v in &a[1..] {
                            if name == "LPUSH" { l.push_front(v.to_vec()) } else { l.push_back(v.to_vec()) }
                        }
                        let n = l.len() as i64;
                        resp::integer(out, n);
                    }
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "LPOP" | "RPOP" => {
                need!(a.len() == 1 || a.len() == 2);
                let count = match a.get(1) {
                    Some(c) => match int(c).filter(|&c| c >= 0) {
                        Some(c) => Some(c as usize),
                        None => return self.reply_err(out, "ERR value is out of range, must be positive"),
                    },
                    None => None,
                };
                match self.live(a[0], now).map(|i| &mut i.value) {
                    None if count.is_some() => out.extend_from_slice(b"*-1\r\n"),
                    None => resp::null(out),
                    Some(Value::List(l)) => {
                        let mut pop = || if name == "LPOP" { l.pop_front() } else { l.pop_back() };
                        match count {
                            None => match pop() {
                                Some(v) => resp::bulk(out, &v),
                                None => resp::null(out),
                            },
                            Some(c) => {
                                let items: Vec<Vec<u8>> = std::iter::from_fn(pop).take(c).collect();
                                resp::array(out, items.len());
                                for v in &items {
                                    resp::bulk(out, v);
                                }
                            }
                        }
                    }
                    Some(_) => resp::error(out, WRONGTYPE),
                }
                self.drop_if_empty(a[0]);
            }
            "LLEN" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, list, zero, |l, out| resp::integer(out, l.len() as i64));
            }
            "LINDEX" => {
                need!(a.len() == 2);
                let Some(i) = int(a[1]) else { return self.reply_err(out, NOT_INTEGER) };
                self.read(a[0], now, out, list, resp::null, |l, out| {
                    let idx = if i < 0 { l.len() as i64 + i } else { i };
                    match usize::try_from(idx).ok().and_then(|i| l.get(i)) {
                        Some(v) => resp::bulk(out, v),
                        None => resp::null(out),
                    }
                });
            }
            "LRANGE" => {
                need!(a.len() == 3);
                let (Some(start), Some(stop)) = (int(a[1]), int(a[2])) else { return self.reply_err(out, NOT_INTEGER) };
                self.read(a[0], now, out, list, empty_array, |l, out| match index_range(start, stop, l.len()) {
                    None => resp::array(out, 0),
                    Some((s, e)) => {
                        resp::array(out, e - s + 1);
                        for v in l.range(s..=e) {
                            resp::bulk(out, v);
                        }
                    }
                });
            }
            "SADD" => {
                need!(a.len() >= 2);
                match self.value_or(a[0], now, || Value::Set(HashSet::new())) {
                    Value::Set(s) => {
                        let n = a[1..].iter().filter(|m| s.insert(m.to_vec())).count();
                        resp::integer(out, n as i64);
                    }
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "SREM" => {
                need!(a.len() >= 2);
                self.read(a[0], now, out, set, zero, |s, out| {
                    let n = a[1..].iter().filter(|m| s.remove(**m)).count();
                    resp::integer(out, n as i64);
                });
            }
            "SPOP" => {
                need!(a.len() == 1);
                let r = self.random() as usize;
                self.read(a[0], now, out, set, resp::null, |s, out| match s.iter().nth(r % s.len().max(1)).cloned() {
                    Some(m) => {
                        s.remove(&m);
                        resp::bulk(out, &m);
                    }
                    None => resp::null(out),
                });
            }
            "SCARD" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, set, zero, |s, out| resp::integer(out, s.len() as i64));
            }
            "SISMEMBER" => {
                need!(a.len() == 2);
                self.read(a[0], now, out, set, zero, |s, out| resp::integer(out, s.contains(a[1]) as i64));
            }
            "SMEMBERS" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, set, empty_array, |s, out| {
                    resp::array(out, s.len());
                    for m in s.iter() {
                        resp::bulk(out, m);
                    }
                });
            }
            "HSET" | "HMSET" => {
                need!(a.len() >= 3 && a.len() & 1 == 1);
                match self.value_or(a[0], now, || Value::Hash(HashMap::new())) {
                    Value::Hash(h) => {
                        let n =
                            a[1..].chunks(2).filter(|fv| h.insert(fv[0].to_vec(), fv[1].to_vec()).is_none()).count();
                        if name == "HSET" { resp::integer(out, n as i64) } else { resp::simple(out, "OK") }
                    }
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "HGET" => {
                need!(a.len() == 2);
                self.read(a[0], now, out, hash, resp::null, |h, out| match h.get(a[1]) {
                    Some(v) => resp::bulk(out, v),
                    None => resp::null(out),
                });
            }
            "HDEL" => {
                need!(a.len() >= 2);
                self.read(a[0], now, out, hash, zero, |h, out| {
                    let n = a[1..].iter().filter(|f| h.remove(**f).is_some()).count();
                    resp::integer(out, n as i64);
                });
            }
            "HLEN" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, hash, zero, |h, out| resp::integer(out, h.len() as i64));
            }
            "HEXISTS" => {
                need!(a.len() == 2);
                self.read(a[0], now, out, hash, zero, |h, out| resp::integer(out, h.contains_key(a[1]) as i64));
            }
            "HGETALL" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, hash, empty_array, |h, out| {
                    resp::array(out, h.len() * 2);
                    for (f, v) in h.iter() {
                        resp::bulk(out, f);
                        resp::bulk(out, v);
                    }
                });
            }
            "ZADD" => {
                need!(a.len() >= 3 && a.len() & 1 == 1);
                let mut pairs = Vec::new();
                for sm in a[1..].chunks(2) {
                    match float(sm[0]) {
                        Some(s) => pairs.push((s, sm[1])),
                        None => return self.reply_err(out, "ERR value is not a valid float"),
                    }
                }
                match self.value_or(a[0], now, || Value::ZSet(SortedSet::default())) {
                    Value::ZSet(z) => {
                        let n = pairs.iter().filter(|(s, m)| z.insert(m, *s)).count();
                        resp::integer(out, n as i64);
                    }
                    _ => resp::error(out, WRONGTYPE),
                }
            }
            "ZPOPMIN" | "ZPOPMAX" => {
                need!(a.len() == 1 || a.len() == 2);
                let count = match a.get(1) {
                    Some(c) => match int(c).filter(|&c| c >= 0) {
                        Some(c) => c as usize,
                        None => return self.reply_err(out, "ERR value is out of range, must be positive"),
                    },
                    None => 1,
                };
                match self.live(a[0], now).map(|i| &mut i.value) {
                    None => resp::array(out, 0),
                    Some(Value::ZSet(z)) => {
                        let popped: Vec<(Vec<u8>, f64)> =
                            std::iter::from_fn(|| if name == "ZPOPMIN" { z.pop_min() } else { z.pop_max() })
                                .take(count)
                                .collect();
                        resp::array(out, popped.len() * 2);
                        for (m, s) in &popped {
                            resp::bulk(out, m);
                            resp::bulk(out, &format_float(*s));
                        }
                    }
                    Some(_) => resp::error(out, WRONGTYPE),
                }
                self.drop_if_empty(a[0]);
            }
            "ZREM" => {
                need!(a.len() >= 2);
                self.read(a[0], now, out, zset, zero, |z, out| {
                    let n = a[1..].iter().filter(|m| z.remove(m)).count();
                    resp::integer(out, n as i64);
                });
            }
            "ZCARD" => {
                need!(a.len() == 1);
                self.read(a[0], now, out, zset, zero, |z, out| resp::integer(out, z.scores.len() as i64));
            }
            "ZSCORE" => {
                need!(a.len() == 2);
                self.read(a[0], now, out, zset, resp::null, |z, out| match z.scores.get(a[1]) {
                    Some(s) => resp::bulk(out, &format_float(*s)),
                    None => resp::null(out),
                });
            }
            "ZRANGE" => {
                need!(a.len() == 3 || a.len() == 4);
                let with_scores = match a.get(3) {
                    Some(o) if o.eq_ignore_ascii_case(b"WITHSCORES") => true,
                    Some(_) => return self.reply_err(out, SYNTAX),
                    None => false,
                };
                let (Some(start), Some(stop)) = (int(a[1]), int(a[2])) else { return self.reply_err(out, NOT_INTEGER) };
                match self.live(a[0], now).map(|i| &i.value) {
                    None => resp::array(out, 0),
                    Some(Value::ZSet(z)) => match index_range(start, stop, z.order.len()) {
                        None => resp::array(out, 0),
                        Some((s, e)) => {
                            resp::array(out, (e - s + 1) * if with_scores { 2 } else { 1 });
                            for (score, m) in z.order.iter().skip(s).take(e - s + 1) {
                                resp::bulk(out, m);
                                if with_scores {
                                    resp::bulk(out, &format_float(score.0));
                                }
                            }
                        }
                    },
                    Some(_) => resp::error(out, WRONGTYPE),
                }
            }
            "COMMAND" => {
                // No command table: clients (redis-cli's hints) do without it.
                match a.first().map(|s| s.to_ascii_uppercase()) {
                    Some(s) if s == b"COUNT" => resp::integer(out, 0),
                    _ => resp::array(out, 0),
                }
            }
            "CONFIG" => self.config(a, out),
            "INFO" => info_reply(out, info, self.map.len()),
            "CLIENT" => match a.first().map(|s| s.to_ascii_uppercase()) {
                Some(s) if s == b"GETNAME" => resp::null(out),
                Some(s) if s == b"ID" => resp::integer(out, info.connections as i64),
                _ => resp::simple(out, "OK"),
            },
            _ => {
                let shown: String =
                    args[0].iter().take(64).map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect();
                resp::error(out, &format!("ERR unknown command '{shown}', with args beginning with: "));
            }
        }
        After::Continue
    }

    /// Replies for a command on `key` as one kind of value (`kind` picks it
    /// out): `absent` when there is no such key, WRONGTYPE when the key
    /// holds another kind, else `f` on the value. A collection the command
    /// emptied is deleted, as in Redis.
    fn read<T: ?Sized>(
        &mut self,
        key: &[u8],
        now: u64,
        out: &mut Vec<u8>,
        kind: fn(&mut Value) -> Option<&mut T>,
        absent: fn(&mut Vec<u8>),
        f: impl FnOnce(&mut T, &mut Vec<u8>),
    ) {
        match self.live(key, now).map(|i| kind(&mut i.value)) {
            None => absent(out),
            Some(Some(v)) => f(v, out),
            Some(None) => resp::error(out, WRONGTYPE),
        }
        self.drop_if_empty(key);
    }

    fn reply_err(&mut self, out: &mut Vec<u8>, msg: &str) -> After {
        resp::error(out, msg);
        After::Continue
    }

    fn set(&mut self, a: &[&[u8]], now: u64, out: &mut Vec<u8>) {
        let (mut expires, mut nx, mut xx, mut keep_ttl, mut get) = (None, false, false, false, false);
        let mut i = 2;
        while i < a.len() {
            let opt = a[i].to_ascii_uppercase();
            match opt.as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"KEEPTTL" => keep_ttl = true,
                b"GET" => get = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if i + 1 < a.len() => {
                    let Some(t) = int(a[i + 1]).filter(|&t| t > 0) else {
                        return resp::error(out, "ERR invalid expire time in 'set' command");
                    };
                    let t = t as u64;
                    expires = Some(match opt.as_slice() {
                        b"EX" => now.saturating_add(t.saturating_mul(1000)),
                        b"PX" => now.saturating_add(t),
                        // Absolute Unix times against a monotonic clock: relative to the wall clock now.
                        b"EXAT" => now.saturating_add((t.saturating_mul(1000)).saturating_sub(wall_ms())),
                        _ => now.saturating_add(t.saturating_sub(wall_ms())),
                    });
                    i += 1;
                }
                _ => return resp::error(out, SYNTAX),
            }
            i += 1;
        }
        if nx && xx || keep_ttl && expires.is_some() {
            return resp::error(out, SYNTAX);
        }
        let old = self.live(a[0], now);
        let exists = old.is_some();
        let old_ttl = old.as_ref().and_then(|i| i.expires_ms);
        let old_value = match old.map(|i| &i.value) {
            Some(Value::Str(s)) => Some(s.clone()),
            Some(_) if get => return resp::error(out, WRONGTYPE),
            _ => None,
        };
        if nx && exists || xx && !exists {
            return if get { reply_opt(out, old_value) } else { resp::null(out) };
        }
        let expires_ms = if keep_ttl { old_ttl } else { expires };
        self.map.insert(a[0].to_vec(), Item { value: Value::Str(a[1].to_vec()), expires_ms });
        if get { reply_opt(out, old_value) } else { resp::simple(out, "OK") }
    }

    fn incr(&mut self, key: &[u8], by: i64, now: u64, out: &mut Vec<u8>) {
        match self.value_or(key, now, || Value::Str(b"0".to_vec())) {
            Value::Str(s) => match int(s).and_then(|v| v.checked_add(by)) {
                Some(v) => {
                    *s = v.to_string().into_bytes();
                    resp::integer(out, v);
                }
                None => resp::error(out, NOT_INTEGER),
            },
            _ => resp::error(out, WRONGTYPE),
        }
    }

    fn config(&mut self, a: &[&[u8]], out: &mut Vec<u8>) {
        let sub = a.first().map(|s| s.to_ascii_uppercase()).unwrap_or_default();
        match sub.as_slice() {
            b"GET" if a.len() >= 2 => {
                const KNOWN: &[(&str, &str)] = &[
                    ("save", ""),
                    ("appendonly", "no"),
                    ("databases", "1"),
                    ("maxmemory", "0"),
                    ("maxclients", "10000"),
                    ("timeout", "0"),
                ];
                let mut found = Vec::new();
                for pattern in &a[1..] {
                    let p = String::from_utf8_lossy(pattern).to_ascii_lowercase();
                    for (k, v) in KNOWN {
                        if (p == "*" || p == *k) && !found.contains(&(*k, *v)) {
                            found.push((*k, *v));
                        }
                    }
                }
                resp::array(out, found.len() * 2);
                for (k, v) in found {
                    resp::bulk(out, k.as_bytes());
                    resp::bulk(out, v.as_bytes());
                }
            }
            b"SET" | b"RESETSTAT" | b"REWRITE" => resp::simple(out, "OK"),
            _ => resp::error(out, "ERR unknown subcommand or wrong number of arguments for 'config' command"),
        }
    }
}

/// Replies `:0`: an absent key counts as empty.
fn zero(out: &mut Vec<u8>) {
    resp::integer(out, 0)
}

/// Replies `*0`: an absent key reads as an empty collection.
fn empty_array(out: &mut Vec<u8>) {
    resp::array(out, 0)
}

fn string(v: &mut Value) -> Option<&mut Vec<u8>> {
    if let Value::Str(s) = v { Some(s) } else { None }
}

fn list(v: &mut Value) -> Option<&mut VecDeque<Vec<u8>>> {
    if let Value::List(l) = v { Some(l) } else { None }
}

fn set(v: &mut Value) -> Option<&mut HashSet<Vec<u8>>> {
    if let Value::Set(s) = v { Some(s) } else { None }
}

fn hash(v: &mut Value) -> Option<&mut HashMap<Vec<u8>, Vec<u8>>> {
    if let Value::Hash(h) = v { Some(h) } else { None }
}

fn zset(v: &mut Value) -> Option<&mut SortedSet> {
    if let Value::ZSet(z) = v { Some(z) } else { None }
}

fn reply_opt(out: &mut Vec<u8>, v: Option<Vec<u8>>) {
    match v {
        Some(s) => resp::bulk(out, &s),
        None => resp::null(out),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn info_reply(out: &mut Vec<u8>, info: &ServerInfo, keys: usize) {
    let text = format!(
        "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nos:FlexOS\r\nflexos_app:kv\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n# Keyspace\r\n{}",
        info.port,
        info.uptime_ms / 1000,
        info.clients,
        info.connections,
        info.commands,
        if keys > 0 { format!("db0:keys={keys},expires=0,avg_ttl=0\r\n") } else { String::new() }
    );
    resp::bulk(out, text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut Store, now: u64, cmd: &str) -> String {
        let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        let mut out = Vec::new();
        store.execute(&args, now, &ServerInfo::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_and_expiry() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "SET k v EX 2"), "+OK\r\n");
        assert_eq!(run(&mut s, 1000, "GET k"), "$1\r\nv\r\n");
        assert_eq!(run(&mut s, 1000, "TTL k"), ":1\r\n");
        assert_eq!(run(&mut s, 2000, "GET k"), "$-1\r\n");
        assert_eq!(run(&mut s, 2000, "EXISTS k"), ":0\r\n");
        assert_eq!(run(&mut s, 0, "INCR n"), ":1\r\n");
        assert_eq!(run(&mut s, 0, "INCRBY n 41"), ":42\r\n");
        assert_eq!(run(&mut s, 0, "SET x abc"), "+OK\r\n");
        assert!(run(&mut s, 0, "INCR x").starts_with("-ERR value is not an integer"));
        assert_eq!(run(&mut s, 0, "MSET a 1 b 2"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "MGET a b c"), "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n");
        assert_eq!(run(&mut s, 0, "SET a 9 NX"), "$-1\r\n");
        assert_eq!(run(&mut s, 0, "DEL a b c"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "DBSIZE"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "FLUSHALL"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "DBSIZE"), ":0\r\n");
    }

    #[test]
    fn collections() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "RPUSH l a b c"), ":3\r\n");
        assert_eq!(run(&mut s, 0, "LPUSH l z"), ":4\r\n");
        assert_eq!(run(&mut s, 0, "LRANGE l 0 -2"), "*3\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(run(&mut s, 0, "RPOP l"), "$1\r\nc\r\n");
        assert!(run(&mut s, 0, "GET l").starts_with("-WRONGTYPE"));
        assert_eq!(run(&mut s, 0, "SADD s x y x"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "SCARD s"), ":2\r\n");
        assert!(run(&mut s, 0, "SPOP s").starts_with("$1\r\n"));
        assert_eq!(run(&mut s, 0, "HSET h f v g w"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "HGET h g"), "$1\r\nw\r\n");
        assert_eq!(run(&mut s, 0, "ZADD z 2 b 1 a 3 c"), ":3\r\n");
        assert_eq!(run(&mut s, 0, "ZPOPMIN z"), "*2\r\n$1\r\na\r\n$1\r\n1\r\n");
        assert_eq!(run(&mut s, 0, "ZRANGE z 0 -1"), "*2\r\n$1\r\nb\r\n$1\r\nc\r\n");
        assert_eq!(run(&mut s, 0, "TYPE z"), "+zset\r\n");
    }

    #[test]
    fn errors_name_the_command() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "GET"), "-ERR wrong number of arguments for 'get' command\r\n");
        assert!(run(&mut s, 0, "NOPE x").starts_with("-ERR unknown command 'NOPE'"));
        assert_eq!(run(&mut s, 0, "CONFIG GET save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    }
}
