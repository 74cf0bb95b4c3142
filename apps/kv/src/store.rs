//! The data set and the commands: strings (with expiry), lists, sets,
//! hashes and sorted sets, key scans and transactions (MULTI/EXEC), as far
//! as `redis-benchmark`, `redis-cli` and common client libraries use them.
//!
//! Memory a client chooses the size of (keys, values, collection growth,
//! replies) is reserved fallibly before a command changes anything: when
//! the heap has no room, the command is answered `-OOM ...` and nothing
//! else happens (as Redis does past `maxmemory`), instead of the image
//! aborting.

use crate::command::{self, Command};
use crate::glob;
use crate::resp::{self, Out};
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hasher;

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
    fn insert(&mut self, member: Vec<u8>, score: f64) -> bool {
        match self.scores.get_mut(&member) {
            Some(old) => {
                let old = std::mem::replace(old, score);
                let (_, member) = self.order.take(&(Score(old), member)).expect("every member is ordered");
                self.order.insert((Score(score), member));
                false
            }
            None => {
                self.scores.insert(member.clone(), score);
                self.order.insert((Score(score), member));
                true
            }
        }
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
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
/// The largest string SETRANGE may make (Redis's `proto-max-bulk-len`).
const MAX_STRING: usize = 512 * 1024 * 1024;

/// The heap has no room for what a command needs; the command is refused
/// before it changes anything.
#[derive(Debug)]
pub struct Oom;

/// Copies `bytes` into a new buffer, if the heap has room.
fn copy(bytes: &[u8]) -> Result<Vec<u8>, Oom> {
    if !flexos_alloc::has_room(bytes.len()) {
        return Err(Oom);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len()).map_err(|_| Oom)?;
    v.extend_from_slice(bytes);
    Ok(v)
}

/// Copies every one of `items`, or none.
fn copies(items: &[&[u8]]) -> Result<Vec<Vec<u8>>, Oom> {
    let mut all = Vec::new();
    grow(&mut all, items.len())?;
    for i in items {
        all.push(copy(i)?);
    }
    Ok(all)
}

/// Collections whose growth is reserved before elements are added.
trait Grow {
    /// Elements held, elements that fit without growing, bytes per element.
    fn sizes(&self) -> (usize, usize, usize);
    /// Makes room for `n` more elements.
    fn try_grow(&mut self, n: usize) -> Result<(), std::collections::TryReserveError>;
}

macro_rules! grows {
    ($($t:ty),*) => {$(
        impl<T> Grow for $t {
            fn sizes(&self) -> (usize, usize, usize) {
                (self.len(), self.capacity(), std::mem::size_of::<T>().max(1))
            }
            fn try_grow(&mut self, n: usize) -> Result<(), std::collections::TryReserveError> {
                self.try_reserve(n)
            }
        }
    )*};
}
grows!(Vec<T>, VecDeque<T>);

impl<T: Eq + std::hash::Hash> Grow for HashSet<T> {
    fn sizes(&self) -> (usize, usize, usize) {
        (self.len(), self.capacity(), std::mem::size_of::<T>() + 1)
    }
    fn try_grow(&mut self, n: usize) -> Result<(), std::collections::TryReserveError> {
        self.try_reserve(n)
    }
}

impl<K: Eq + std::hash::Hash, V> Grow for HashMap<K, V> {
    fn sizes(&self) -> (usize, usize, usize) {
        (self.len(), self.capacity(), std::mem::size_of::<(K, V)>() + 1)
    }
    fn try_grow(&mut self, n: usize) -> Result<(), std::collections::TryReserveError> {
        self.try_reserve(n)
    }
}

/// Makes room for `n` more elements in `c` if the heap has room for its growth.
fn grow<G: Grow>(c: &mut G, n: usize) -> Result<(), Oom> {
    let (len, capacity, each) = c.sizes();
    if len.saturating_add(n) > capacity {
        let bytes = len.saturating_add(n).max(capacity.saturating_mul(2)).saturating_mul(each);
        if !flexos_alloc::has_room(bytes) {
            return Err(Oom);
        }
    }
    c.try_grow(n).map_err(|_| Oom)
}

/// The state of one connection: a transaction being queued.
#[derive(Default)]
pub struct Session {
    /// Commands queued since MULTI (None: no transaction).
    queue: Option<Vec<Vec<Vec<u8>>>>,
    /// A command queued since MULTI was refused: EXEC discards the transaction.
    aborted: bool,
}

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
    if arg.is_empty() || arg.len() > 20 || arg[0] == b'+' {
        return None;
    }
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

/// `start..=stop` (Redis index rules, negative from the end) clamped to `len`.
fn index_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 { (len + start).max(0) } else { start };
    let stop = if stop < 0 { len + stop } else { stop.min(len - 1) };
    (start <= stop && start < len).then_some((start as usize, stop as usize))
}

/// The hash that orders a SCAN: fixed for a key (SipHash with fixed keys).
fn scan_hash(key: &[u8]) -> u64 {
    #[allow(deprecated)] // SipHasher::new: the fixed-key hasher; only stable order matters here.
    let mut h = std::hash::SipHasher::new();
    h.write(key);
    h.finish()
}

/// The options of SCAN, SSCAN and HSCAN after the cursor.
struct ScanOptions {
    pattern: Option<Vec<u8>>,
    count: usize,
    kind: Option<String>,
}

fn scan_options(a: &[&[u8]], allow_type: bool) -> Result<ScanOptions, &'static str> {
    let mut o = ScanOptions { pattern: None, count: 10, kind: None };
    let mut i = 0;
    while i < a.len() {
        let value = a.get(i + 1).ok_or(SYNTAX)?;
        match a[i].to_ascii_uppercase().as_slice() {
            b"MATCH" => o.pattern = Some(value.to_vec()),
            b"COUNT" => match int(value) {
                Some(n) if n >= 1 => o.count = n as usize,
                Some(_) => return Err(SYNTAX),
                None => return Err(NOT_INTEGER),
            },
            b"TYPE" if allow_type => o.kind = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
            _ => return Err(SYNTAX),
        }
        i += 2;
    }
    Ok(o)
}

/// One step of a scan over `entries` (key and value) from `cursor`.
///
/// Entries are visited in the order of [`scan_hash`] of their keys; the
/// cursor is the next hash to visit. An entry present from the first call
/// to the last is therefore returned at least once, whatever changes in
/// between, as Redis promises. A step visits `count` entries, or a
/// hundredth of the collection if that is more (COUNT is a hint in Redis
/// too), so a full scan costs about a hundred passes at most. Returns the
/// next cursor (0: done) and the entries visited, in hash order.
fn scan_step<'a, V: Copy>(
    entries: impl Iterator<Item = (&'a [u8], V)> + Clone,
    cursor: u64,
    count: usize,
) -> (u64, Vec<(&'a [u8], V)>) {
    let total = entries.clone().count();
    let batch = count.max(total / 100).max(1);
    // The `batch` smallest hashes at or after the cursor.
    let mut smallest: BinaryHeap<u64> = BinaryHeap::with_capacity(batch + 1);
    let mut later = 0usize;
    for (k, _) in entries.clone() {
        let h = scan_hash(k);
        if h < cursor {
            continue;
        }
        later += 1;
        if smallest.len() < batch {
            smallest.push(h);
        } else if smallest.peek().is_some_and(|&top| h < top) {
            smallest.pop();
            smallest.push(h);
        }
    }
    let Some(&last) = smallest.peek() else { return (0, Vec::new()) };
    let mut step: Vec<(u64, &[u8], V)> =
        entries.map(|(k, v)| (scan_hash(k), k, v)).filter(|(h, ..)| (cursor..=last).contains(h)).collect();
    step.sort_by_key(|(h, ..)| *h);
    let next = if step.len() < later && last < u64::MAX { last + 1 } else { 0 };
    (next, step.into_iter().map(|(_, k, v)| (k, v)).collect())
}

/// Writes a scan reply: the cursor, then the elements.
fn scan_reply(out: &mut Out, next: u64, elements: &[&[u8]]) {
    resp::array(out, 2);
    resp::bulk(out, next.to_string().as_bytes());
    resp::array(out, elements.len());
    for e in elements {
        resp::bulk(out, e);
    }
}

fn parse_cursor(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
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

    /// Sets `key` to `value` (replacing whatever it held), with room reserved first.
    fn put(&mut self, key: &[u8], value: Value, expires_ms: Option<u64>) -> Result<(), Oom> {
        match self.map.get_mut(key) {
            Some(item) => *item = Item { value, expires_ms },
            None => {
                let key = copy(key)?;
                grow(&mut self.map, 1)?;
                self.map.insert(key, Item { value, expires_ms });
            }
        }
        Ok(())
    }

    /// The value at `key`, created by `make` if absent.
    fn value_or(&mut self, key: &[u8], now: u64, make: impl FnOnce() -> Value) -> Result<&mut Value, Oom> {
        if self.live(key, now).is_none() {
            self.put(key, make(), None)?;
        }
        Ok(&mut self.map.get_mut(key).expect("inserted above").value)
    }

    fn drop_if_empty(&mut self, key: &[u8]) {
        if self.map.get(key).is_some_and(|i| i.value.is_empty()) {
            self.map.remove(key);
        }
    }

    /// Runs the command `args` (name first) for a connection in `session`
    /// at time `now` (ms) and appends its reply to `out`. MULTI starts
    /// queueing the connection's commands, EXEC runs them, DISCARD drops them.
    pub fn handle(
        &mut self,
        session: &mut Session,
        args: &[&[u8]],
        now: u64,
        info: &ServerInfo,
        out: &mut Out,
    ) -> After {
        let Some(name) = args.first() else {
            return After::Continue; // an empty inline line: no reply, as in Redis.
        };
        let Some(cmd) = command::lookup(name) else {
            session.aborted |= session.queue.is_some();
            resp::error_bytes(out, &command::unknown(args));
            return After::Continue;
        };
        if !cmd.accepts(args.len()) {
            session.aborted |= session.queue.is_some();
            resp::error(out, &command::wrong_arity(cmd.name));
            return After::Continue;
        }
        match (cmd.name, &mut session.queue) {
            ("MULTI", Some(_)) => resp::error(out, "ERR MULTI calls can not be nested"),
            ("MULTI", queue @ None) => {
                *queue = Some(Vec::new());
                session.aborted = false;
                resp::simple(out, "OK");
            }
            ("EXEC", None) => resp::error(out, "ERR EXEC without MULTI"),
            ("DISCARD", None) => resp::error(out, "ERR DISCARD without MULTI"),
            ("DISCARD", queue @ Some(_)) => {
                *queue = None;
                resp::simple(out, "OK");
            }
            ("EXEC", queue @ Some(_)) => {
                let queued = queue.take().unwrap_or_default();
                if std::mem::take(&mut session.aborted) {
                    resp::error(out, "EXECABORT Transaction discarded because of previous errors.");
                } else {
                    resp::array(out, queued.len());
                    for args in &queued {
                        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                        let cmd = command::lookup(args[0]).expect("only known commands are queued");
                        self.execute(cmd, &args, now, info, out);
                    }
                }
            }
            ("QUIT", _) => {
                resp::simple(out, "OK");
                return After::Close;
            }
            (_, Some(queue)) => match copies(args).and_then(|c| grow(queue, 1).map(|()| c)) {
                Ok(copied) => {
                    queue.push(copied);
                    resp::simple(out, "QUEUED");
                }
                Err(Oom) => {
                    session.aborted = true;
                    resp::error(out, OOM);
                }
            },
            (_, None) => return self.execute(cmd, args, now, info, out),
        }
        After::Continue
    }

    /// Runs one command (`args[0]` names `cmd`, its arity is checked)
    /// outside a transaction (see [`Store::handle`]).
    fn execute(&mut self, cmd: &Command, args: &[&[u8]], now: u64, info: &ServerInfo, out: &mut Out) -> After {
        let start = out.len();
        match self.run(cmd, &args[1..], now, info, out) {
            Ok(after) => after,
            Err(Oom) => {
                // Nothing changed, but perhaps an empty collection was made for the key.
                self.drop_if_empty(args[1]);
                out.truncate(start);
                resp::error(out, OOM);
                After::Continue
            }
        }
    }

    fn run(&mut self, cmd: &Command, a: &[&[u8]], now: u64, info: &ServerInfo, out: &mut Out) -> Result<After, Oom> {
        let name = cmd.name;
        macro_rules! fail {
            ($msg:expr) => {{
                resp::error(out, $msg);
                return Ok(After::Continue);
            }};
        }
        match name {
            "PING" => match a {
                [] => resp::simple(out, "PONG"),
                [m] => resp::bulk(out, m),
                _ => fail!(&command::wrong_arity(name)),
            },
            "ECHO" => resp::bulk(out, a[0]),
            "QUIT" => {
                resp::simple(out, "OK");
                return Ok(After::Close);
            }
            "MULTI" | "EXEC" | "DISCARD" => fail!(&format!("ERR {name} inside MULTI is not allowed")),
            "SELECT" => {
                if int(a[0]) == Some(0) {
                    resp::simple(out, "OK")
                } else {
                    resp::error(out, "ERR DB index is out of range")
                }
            }
            "GET" => self.read(a[0], now, out, string, resp::null, |s, out| resp::bulk(out, s)),
            "SET" => self.set(a, now, out)?,
            "SETNX" => {
                let exists = self.live(a[0], now).is_some();
                if !exists {
                    let value = copy(a[1])?;
                    self.put(a[0], Value::Str(value), None)?;
                }
                resp::integer(out, !exists as i64);
            }
            "SETEX" | "PSETEX" => {
                let unit = if name == "SETEX" { 1000 } else { 1 };
                match int(a[1]).filter(|&t| t > 0) {
                    Some(t) => {
                        let expires = now.saturating_add((t as u64).saturating_mul(unit));
                        let value = copy(a[2])?;
                        self.put(a[0], Value::Str(value), Some(expires))?;
                        resp::simple(out, "OK");
                    }
                    None => fail!(&format!("ERR invalid expire time in '{}' command", name.to_ascii_lowercase())),
                }
            }
            "GETSET" => {
                let old = match self.live(a[0], now).map(|i| &mut i.value) {
                    Some(Value::Str(s)) => Some(std::mem::take(s)),
                    Some(_) => fail!(WRONGTYPE),
                    None => None,
                };
                let value = match copy(a[1]) {
                    Ok(v) => v,
                    Err(Oom) => {
                        // Nothing may change: put the old value back.
                        if let (Some(old), Some(Item { value: Value::Str(s), .. })) = (old, self.map.get_mut(a[0])) {
                            *s = old;
                        }
                        return Err(Oom);
                    }
                };
                self.put(a[0], Value::Str(value), None)?;
                reply_opt(out, old);
            }
            "MSET" => {
                if !a.len().is_multiple_of(2) {
                    fail!(&command::wrong_arity(name));
                }
                let values = copies(a)?;
                grow(&mut self.map, a.len() / 2)?;
                for kv in values.chunks(2) {
                    self.map.insert(kv[0].clone(), Item { value: Value::Str(kv[1].clone()), expires_ms: None });
                }
                resp::simple(out, "OK");
            }
            "MGET" => {
                resp::array(out, a.len());
                for k in a {
                    match self.live(k, now).map(|i| &i.value) {
                        Some(Value::Str(s)) => resp::bulk(out, s),
                        _ => resp::null(out),
                    }
                }
            }
            "APPEND" => match self.live(a[0], now).map(|i| &mut i.value) {
                None => {
                    let value = copy(a[1])?;
                    resp::integer(out, value.len() as i64);
                    self.put(a[0], Value::Str(value), None)?;
                }
                Some(Value::Str(s)) => {
                    grow(s, a[1].len())?;
                    s.extend_from_slice(a[1]);
                    let n = s.len() as i64;
                    resp::integer(out, n);
                }
                Some(_) => fail!(WRONGTYPE),
            },
            "STRLEN" => self.read(a[0], now, out, string, zero, |s, out| resp::integer(out, s.len() as i64)),
            "GETRANGE" => {
                let (Some(start), Some(end)) = (int(a[1]), int(a[2])) else { fail!(NOT_INTEGER) };
                self.read(a[0], now, out, string, empty_bulk, |s, out| {
                    let len = s.len() as i64;
                    let (start, end) = (
                        if start < 0 { (len + start).max(0) } else { start },
                        if end < 0 { (len + end).max(0) } else { end.min(len - 1) },
                    );
                    if len == 0 || start > end || start >= len {
                        resp::bulk(out, b"");
                    } else {
                        resp::bulk(out, &s[start as usize..=end as usize]);
                    }
                });
            }
            "SETRANGE" => {
                let Some(offset) = int(a[1]) else { fail!(NOT_INTEGER) };
                if offset < 0 {
                    fail!("ERR offset is out of range");
                }
                let offset = offset as usize;
                if offset.saturating_add(a[2].len()) > MAX_STRING {
                    fail!("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
                }
                let end = offset + a[2].len();
                match self.live(a[0], now).map(|i| &mut i.value) {
                    None if a[2].is_empty() => resp::integer(out, 0),
                    None => {
                        let mut value = Vec::new();
                        grow(&mut value, end)?;
                        value.resize(offset, 0);
                        value.extend_from_slice(a[2]);
                        self.put(a[0], Value::Str(value), None)?;
                        resp::integer(out, end as i64);
                    }
                    Some(Value::Str(s)) => {
                        if end > s.len() {
                            grow(s, end - s.len())?;
                            s.resize(end, 0);
                        }
                        s[offset..end].copy_from_slice(a[2]);
                        resp::integer(out, s.len() as i64);
                    }
                    Some(_) => fail!(WRONGTYPE),
                }
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match name {
                    "INCR" => Some(1),
                    "DECR" => Some(-1),
                    "INCRBY" => int(a[1]),
                    _ => int(a[1]).and_then(i64::checked_neg),
                };
                let Some(by) = by else { fail!(NOT_INTEGER) };
                match self.value_or(a[0], now, || Value::Str(b"0".to_vec()))? {
                    Value::Str(s) => match int(s).and_then(|v| v.checked_add(by)) {
                        Some(v) => {
                            *s = v.to_string().into_bytes();
                            resp::integer(out, v);
                        }
                        None => fail!(NOT_INTEGER),
                    },
                    _ => fail!(WRONGTYPE),
                }
            }
            "INCRBYFLOAT" => {
                let Some(by) = float(a[1]) else { fail!(NOT_FLOAT) };
                match self.value_or(a[0], now, || Value::Str(b"0".to_vec()))? {
                    Value::Str(s) => match float(s).map(|v| v + by).filter(|v| v.is_finite()) {
                        Some(v) => {
                            *s = format_float(v);
                            resp::bulk(out, s);
                        }
                        None => fail!(NOT_FLOAT),
                    },
                    _ => fail!(WRONGTYPE),
                }
            }
            "DEL" | "UNLINK" => {
                let n = a.iter().filter(|k| self.live(k, now).is_some() && self.map.remove(**k).is_some()).count();
                resp::integer(out, n as i64);
            }
            "EXISTS" => {
                let n = a.iter().filter(|k| self.live(k, now).is_some()).count();
                resp::integer(out, n as i64);
            }
            "TYPE" => {
                let t = self.live(a[0], now).map_or("none", |i| i.value.type_name());
                resp::simple(out, t);
            }
            "EXPIRE" | "PEXPIRE" => {
                let Some(t) = int(a[1]) else { fail!(NOT_INTEGER) };
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
                let had = self.live(a[0], now).and_then(|i| i.expires_ms.take()).is_some();
                resp::integer(out, had as i64);
            }
            "TTL" | "PTTL" => {
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
                let pattern = a[0];
                let all = pattern == b"*";
                let alive = |(k, i): &(&Vec<u8>, &Item)| {
                    i.expires_ms.is_none_or(|e| e > now) && (all || glob::matches(pattern, k))
                };
                resp::array(out, self.map.iter().filter(alive).count());
                for (k, _) in self.map.iter().filter(alive) {
                    resp::bulk(out, k);
                }
            }
            "SCAN" => {
                let Some(cursor) = parse_cursor(a[0]) else { fail!("ERR invalid cursor") };
                let o = match scan_options(&a[1..], true) {
                    Ok(o) => o,
                    Err(e) => fail!(e),
                };
                let entries = self.map.iter().map(|(k, i)| (k.as_slice(), i));
                let (next, step) = scan_step(entries, cursor, o.count);
                let keys: Vec<&[u8]> = step
                    .into_iter()
                    .filter(|(k, i)| {
                        i.expires_ms.is_none_or(|e| e > now)
                            && o.pattern.as_ref().is_none_or(|p| glob::matches(p, k))
                            && o.kind.as_ref().is_none_or(|t| t == i.value.type_name())
                    })
                    .map(|(k, _)| k)
                    .collect();
                scan_reply(out, next, &keys);
            }
            "DBSIZE" => resp::integer(out, self.map.len() as i64),
            "FLUSHALL" | "FLUSHDB" => {
                self.map = HashMap::new();
                resp::simple(out, "OK");
            }
            "LPUSH" | "RPUSH" => {
                let values = copies(&a[1..])?;
                match self.value_or(a[0], now, || Value::List(VecDeque::new()))? {
                    Value::List(l) => {
                        grow(l, values.len())?;
                        for v in values {
                            if name == "LPUSH" { l.push_front(v) } else { l.push_back(v) }
                        }
                        let n = l.len() as i64;
                        resp::integer(out, n);
                    }
                    _ => fail!(WRONGTYPE),
                }
            }
            "LPOP" | "RPOP" => {
                let count = match a {
                    [_] => None,
                    [_, c] => match int(c).filter(|&c| c >= 0) {
                        Some(c) => Some(c as usize),
                        None => fail!("ERR value is out of range, must be positive"),
                    },
                    _ => fail!(&command::wrong_arity(name)),
                };
                match self.live(a[0], now).map(|i| &mut i.value) {
                    None if count.is_some() => resp::null_array(out),
                    None => resp::null(out),
                    Some(Value::List(l)) => {
                        let mut pop = || if name == "LPOP" { l.pop_front() } else { l.pop_back() };
                        match count {
                            None => reply_opt(out, pop()),
                            Some(c) => {
                                let items: Vec<Vec<u8>> = std::iter::from_fn(pop).take(c).collect();
                                resp::array(out, items.len());
                                for v in &items {
                                    resp::bulk(out, v);
                                }
                            }
                        }
                    }
                    Some(_) => fail!(WRONGTYPE),
                }
                self.drop_if_empty(a[0]);
            }
            "LLEN" => self.read(a[0], now, out, list, zero, |l, out| resp::integer(out, l.len() as i64)),
            "LINDEX" => {
                let Some(i) = int(a[1]) else { fail!(NOT_INTEGER) };
                self.read(a[0], now, out, list, resp::null, |l, out| {
                    let idx = if i < 0 { l.len() as i64 + i } else { i };
                    match usize::try_from(idx).ok().and_then(|i| l.get(i)) {
                        Some(v) => resp::bulk(out, v),
                        None => resp::null(out),
                    }
                });
            }
            "LSET" => {
                let Some(i) = int(a[1]) else { fail!(NOT_INTEGER) };
                let value = copy(a[2])?;
                match self.live(a[0], now).map(|i| &mut i.value) {
                    None => fail!("ERR no such key"),
                    Some(Value::List(l)) => {
                        let idx = if i < 0 { l.len() as i64 + i } else { i };
                        match usize::try_from(idx).ok().and_then(|i| l.get_mut(i)) {
                            Some(slot) => {
                                *slot = value;
                                resp::simple(out, "OK");
                            }
                            None => fail!("ERR index out of range"),
                        }
                    }
                    Some(_) => fail!(WRONGTYPE),
                }
            }
            "LRANGE" => {
                let (Some(start), Some(stop)) = (int(a[1]), int(a[2])) else { fail!(NOT_INTEGER) };
                self.read(a[0], now, out, list, empty_array, |l, out| match index_range(start, stop, l.len()) {
                    None => resp::array(out, 0),
                    Some((s, e)) => {
                        resp::array(out, e - s + 1);
                        for v in l.range(s..=e) {
                            resp::bulk(out, v);
                            if out.overflow().is_some() {
                                break; // the connection is closed: stop early
                            }
                        }
                    }
                });
            }
            "SADD" => {
                let members = copies(&a[1..])?;
                match self.value_or(a[0], now, || Value::Set(HashSet::new()))? {
                    Value::Set(s) => {
                        grow(s, members.len())?;
                        let n = members.into_iter().filter(|m| s.insert(m.clone())).count();
                        resp::integer(out, n as i64);
                    }
                    _ => fail!(WRONGTYPE),
                }
            }
            "SREM" => self.read(a[0], now, out, set, zero, |s, out| {
                let n = a[1..].iter().filter(|m| s.remove(**m)).count();
                resp::integer(out, n as i64);
            }),
            "SPOP" => {
                let count = match a {
                    [_] => None,
                    [_, c] => match int(c).filter(|&c| c >= 0) {
                        Some(c) => Some(c as usize),
                        None => fail!("ERR value is out of range, must be positive"),
                    },
                    _ => fail!(SYNTAX),
                };
                let r = self.random() as usize;
                self.read(a[0], now, out, set, if count.is_some() { empty_array } else { resp::null }, |s, out| {
                    let take = count.unwrap_or(1).min(s.len());
                    let skip = if s.len() > take { r % (s.len() - take + 1) } else { 0 };
                    let popped: Vec<Vec<u8>> = s.iter().skip(skip).take(take).cloned().collect();
                    for m in &popped {
                        s.remove(m);
                    }
                    match count {
                        None => reply_opt(out, popped.into_iter().next()),
                        Some(_) => {
                            resp::array(out, popped.len());
                            for m in &popped {
                                resp::bulk(out, m);
                            }
                        }
                    }
                });
            }
            "SCARD" => self.read(a[0], now, out, set, zero, |s, out| resp::integer(out, s.len() as i64)),
            "SISMEMBER" => self.read(a[0], now, out, set, zero, |s, out| resp::integer(out, s.contains(a[1]) as i64)),
            "SMEMBERS" => self.read(a[0], now, out, set, empty_array, |s, out| {
                resp::array(out, s.len());
                for m in s.iter() {
                    resp::bulk(out, m);
                }
            }),
            "SSCAN" | "HSCAN" => {
                let Some(cursor) = parse_cursor(a[1]) else { fail!("ERR invalid cursor") };
                let o = match scan_options(&a[2..], false) {
                    Ok(o) => o,
                    Err(e) => fail!(e),
                };
                let keep = |k: &[u8]| o.pattern.as_ref().is_none_or(|p| glob::matches(p, k));
                match self.live(a[0], now).map(|i| &i.value) {
                    None => scan_reply(out, 0, &[]),
                    Some(Value::Set(s)) if name == "SSCAN" => {
                        let (next, step) = scan_step(s.iter().map(|m| (m.as_slice(), ())), cursor, o.count);
                        let members: Vec<&[u8]> = step.into_iter().map(|(m, _)| m).filter(|m| keep(m)).collect();
                        scan_reply(out, next, &members);
                    }
                    Some(Value::Hash(h)) if name == "HSCAN" => {
                        let (next, step) =
                            scan_step(h.iter().map(|(f, v)| (f.as_slice(), v.as_slice())), cursor, o.count);
                        let pairs: Vec<&[u8]> =
                            step.into_iter().filter(|(f, _)| keep(f)).flat_map(|(f, v)| [f, v]).collect();
                        scan_reply(out, next, &pairs);
                    }
                    Some(_) => fail!(WRONGTYPE),
                }
            }
            "HSET" | "HMSET" => {
                if a.len().is_multiple_of(2) {
                    fail!(&command::wrong_arity(name));
                }
                let pairs = copies(&a[1..])?;
                match self.value_or(a[0], now, || Value::Hash(HashMap::new()))? {
                    Value::Hash(h) => {
                        grow(h, pairs.len() / 2)?;
                        let mut added = 0;
                        let mut it = pairs.into_iter();
                        while let (Some(f), Some(v)) = (it.next(), it.next()) {
                            added += h.insert(f, v).is_none() as i64;
                        }
                        if name == "HSET" { resp::integer(out, added) } else { resp::simple(out, "OK") }
                    }
                    _ => fail!(WRONGTYPE),
                }
            }
            "HGET" => self.read(a[0], now, out, hash, resp::null, |h, out| match h.get(a[1]) {
                Some(v) => resp::bulk(out, v),
                None => resp::null(out),
            }),
            "HINCRBY" => {
                let Some(by) = int(a[2]) else { fail!(NOT_INTEGER) };
                let field = copy(a[1])?;
                match self.value_or(a[0], now, || Value::Hash(HashMap::new()))? {
                    Value::Hash(h) => {
                        let old = match h.get(a[1]) {
                            Some(v) => match int(v) {
                                Some(v) => v,
                                None => fail!("ERR hash value is not an integer"),
                            },
                            None => 0,
                        };
                        let Some(v) = old.checked_add(by) else { fail!("ERR increment or decrement would overflow") };
                        grow(h, 1)?;
                        h.insert(field, v.to_string().into_bytes());
                        resp::integer(out, v);
                    }
                    _ => fail!(WRONGTYPE),
                }
                self.drop_if_empty(a[0]);
            }
            "HDEL" => self.read(a[0], now, out, hash, zero, |h, out| {
                let n = a[1..].iter().filter(|f| h.remove(**f).is_some()).count();
                resp::integer(out, n as i64);
            }),
            "HLEN" => self.read(a[0], now, out, hash, zero, |h, out| resp::integer(out, h.len() as i64)),
            "HEXISTS" => {
                self.read(a[0], now, out, hash, zero, |h, out| resp::integer(out, h.contains_key(a[1]) as i64))
            }
            "HGETALL" => self.read(a[0], now, out, hash, empty_array, |h, out| {
                resp::array(out, h.len() * 2);
                for (f, v) in h.iter() {
                    resp::bulk(out, f);
                    resp::bulk(out, v);
                }
            }),
            "ZADD" => {
                if a.len().is_multiple_of(2) {
                    fail!(SYNTAX);
                }
                let mut pairs = Vec::new();
                grow(&mut pairs, a.len() / 2)?;
                for sm in a[1..].chunks(2) {
                    match float(sm[0]) {
                        Some(s) => pairs.push((s, copy(sm[1])?)),
                        None => fail!(NOT_FLOAT),
                    }
                }
                match self.value_or(a[0], now, || Value::ZSet(SortedSet::default()))? {
                    Value::ZSet(z) => {
                        grow(&mut z.scores, pairs.len())?;
                        let n = pairs.into_iter().filter(|(s, m)| z.insert(m.clone(), *s)).count();
                        resp::integer(out, n as i64);
                    }
                    _ => fail!(WRONGTYPE),
                }
            }
            "ZPOPMIN" | "ZPOPMAX" => {
                let count = match a {
                    [_] => 1,
                    [_, c] => match int(c).filter(|&c| c >= 0) {
                        Some(c) => c as usize,
                        None => fail!("ERR value is out of range, must be positive"),
                    },
                    _ => fail!(SYNTAX),
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
                    Some(_) => fail!(WRONGTYPE),
                }
                self.drop_if_empty(a[0]);
            }
            "ZREM" => self.read(a[0], now, out, zset, zero, |z, out| {
                let n = a[1..].iter().filter(|m| z.remove(m)).count();
                resp::integer(out, n as i64);
            }),
            "ZCARD" => self.read(a[0], now, out, zset, zero, |z, out| resp::integer(out, z.scores.len() as i64)),
            "ZSCORE" => self.read(a[0], now, out, zset, resp::null, |z, out| match z.scores.get(a[1]) {
                Some(s) => resp::bulk(out, &format_float(*s)),
                None => resp::null(out),
            }),
            "ZRANGE" => {
                let with_scores = match a.get(3) {
                    Some(o) if o.eq_ignore_ascii_case(b"WITHSCORES") && a.len() == 4 => true,
                    Some(_) => fail!(SYNTAX),
                    None => false,
                };
                let (Some(start), Some(stop)) = (int(a[1]), int(a[2])) else { fail!(NOT_INTEGER) };
                self.read(a[0], now, out, zset, empty_array, |z, out| match index_range(start, stop, z.order.len()) {
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
                });
            }
            "COMMAND" => match a.first().map(|s| s.to_ascii_uppercase()) {
                Some(s) if s == b"COUNT" => resp::integer(out, command::COMMANDS.len() as i64),
                // No command documentation: clients (redis-cli's hints) do without it.
                _ => resp::array(out, 0),
            },
            "CONFIG" => self.config(a, out),
            "INFO" => info_reply(out, info, self.map.len()),
            "CLIENT" => match a[0].to_ascii_uppercase().as_slice() {
                b"GETNAME" => resp::null(out),
                b"ID" => resp::integer(out, info.connections as i64),
                _ => resp::simple(out, "OK"),
            },
            _ => resp::error_bytes(out, &command::unknown(&[name.as_bytes()])),
        }
        Ok(After::Continue)
    }

    /// Replies for a command on `key` as one kind of value (`kind` picks it
    /// out): `absent` when there is no such key, WRONGTYPE when the key
    /// holds another kind, else `f` on the value. A collection the command
    /// emptied is deleted, as in Redis.
    fn read<T: ?Sized>(
        &mut self,
        key: &[u8],
        now: u64,
        out: &mut Out,
        kind: fn(&mut Value) -> Option<&mut T>,
        absent: fn(&mut Out),
        f: impl FnOnce(&mut T, &mut Out),
    ) {
        match self.live(key, now).map(|i| kind(&mut i.value)) {
            None => absent(out),
            Some(Some(v)) => f(v, out),
            Some(None) => resp::error(out, WRONGTYPE),
        }
        self.drop_if_empty(key);
    }

    fn set(&mut self, a: &[&[u8]], now: u64, out: &mut Out) -> Result<(), Oom> {
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
                        resp::error(out, "ERR invalid expire time in 'set' command");
                        return Ok(());
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
                _ => {
                    resp::error(out, SYNTAX);
                    return Ok(());
                }
            }
            i += 1;
        }
        if nx && xx || keep_ttl && expires.is_some() {
            resp::error(out, SYNTAX);
            return Ok(());
        }
        let old = self.live(a[0], now);
        let exists = old.is_some();
        let old_ttl = old.as_ref().and_then(|i| i.expires_ms);
        let old_value = match old.map(|i| &i.value) {
            Some(Value::Str(s)) if get => Some(copy(s)?),
            Some(Value::Str(_)) => None,
            Some(_) if get => {
                resp::error(out, WRONGTYPE);
                return Ok(());
            }
            _ => None,
        };
        if nx && exists || xx && !exists {
            if get {
                reply_opt(out, old_value)
            } else {
                resp::null(out)
            }
            return Ok(());
        }
        let expires_ms = if keep_ttl { old_ttl } else { expires };
        let value = copy(a[1])?;
        self.put(a[0], Value::Str(value), expires_ms)?;
        if get {
            reply_opt(out, old_value)
        } else {
            resp::simple(out, "OK")
        }
        Ok(())
    }

    fn config(&mut self, a: &[&[u8]], out: &mut Out) {
        let sub = a[0].to_ascii_uppercase();
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
                    let p = pattern.to_ascii_lowercase();
                    for (k, v) in KNOWN {
                        if glob::matches(&p, k.as_bytes()) && !found.contains(&(*k, *v)) {
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
fn zero(out: &mut Out) {
    resp::integer(out, 0)
}

/// Replies `*0`: an absent key reads as an empty collection.
fn empty_array(out: &mut Out) {
    resp::array(out, 0)
}

/// Replies `$0`: an absent key reads as an empty string.
fn empty_bulk(out: &mut Out) {
    resp::bulk(out, b"")
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

fn reply_opt(out: &mut Out, v: Option<Vec<u8>>) {
    match v {
        Some(s) => resp::bulk(out, &s),
        None => resp::null(out),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn info_reply(out: &mut Out, info: &ServerInfo, keys: usize) {
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

    fn run_in(store: &mut Store, session: &mut Session, now: u64, cmd: &str) -> String {
        let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        let mut out = Out::new(Vec::new(), 1 << 30);
        store.handle(session, &args, now, &ServerInfo::default(), &mut out);
        String::from_utf8(out.finish().0).unwrap()
    }

    fn run(store: &mut Store, now: u64, cmd: &str) -> String {
        run_in(store, &mut Session::default(), now, cmd)
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
        assert_eq!(run(&mut s, 0, "SETNX a 9"), ":0\r\n");
        assert_eq!(run(&mut s, 0, "SETNX fresh 9"), ":1\r\n");
        assert_eq!(run(&mut s, 0, "DEL a b c fresh"), ":3\r\n");
        assert_eq!(run(&mut s, 0, "DBSIZE"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "FLUSHALL"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "DBSIZE"), ":0\r\n");
    }

    #[test]
    fn ranges_of_strings() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "SET k Hello"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "GETRANGE k 0 3"), "$4\r\nHell\r\n");
        assert_eq!(run(&mut s, 0, "GETRANGE k -3 -1"), "$3\r\nllo\r\n");
        assert_eq!(run(&mut s, 0, "GETRANGE k 10 20"), "$0\r\n\r\n");
        assert_eq!(run(&mut s, 0, "GETRANGE nokey 0 -1"), "$0\r\n\r\n");
        assert_eq!(run(&mut s, 0, "SETRANGE k 6 World"), ":11\r\n");
        assert_eq!(run(&mut s, 0, "GET k"), "$11\r\nHello\0World\r\n");
        assert_eq!(run(&mut s, 0, "SETRANGE new 0 "), ":0\r\n");
        assert_eq!(run(&mut s, 0, "EXISTS new"), ":0\r\n");
        assert!(run(&mut s, 0, "SETRANGE k -1 x").starts_with("-ERR offset is out of range"));
        assert!(run(&mut s, 0, "SETRANGE k 536870912 x").starts_with("-ERR string exceeds maximum"));
    }

    #[test]
    fn a_command_the_heap_has_no_room_for_is_refused_and_changes_nothing() {
        let mut s = Store::default();
        // Two strings of 512 MiB do not fit in one compartment heap (1 GiB
        // less the stacks and the reserve): the second one is refused.
        assert_eq!(run(&mut s, 0, "SETRANGE a 536870000 x"), ":536870001\r\n");
        assert_eq!(run(&mut s, 0, "SETRANGE b 536870000 x"), format!("-{OOM}\r\n"));
        assert_eq!(run(&mut s, 0, "EXISTS b"), ":0\r\n");
        assert_eq!(run(&mut s, 0, "RPUSH l x"), ":1\r\n");
        assert_eq!(run(&mut s, 0, "APPEND a y"), format!("-{OOM}\r\n"), "growing it would double it");
        assert_eq!(run(&mut s, 0, "STRLEN a"), ":536870001\r\n");
        assert_eq!(run(&mut s, 0, "DEL a"), ":1\r\n");
        assert_eq!(run(&mut s, 0, "SETRANGE b 536870000 x"), ":536870001\r\n", "the memory is free again");
    }

    #[test]
    fn collections() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "RPUSH l a b c"), ":3\r\n");
        assert_eq!(run(&mut s, 0, "LPUSH l z"), ":4\r\n");
        assert_eq!(run(&mut s, 0, "LRANGE l 0 -2"), "*3\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(run(&mut s, 0, "LSET l 1 A"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "LINDEX l 1"), "$1\r\nA\r\n");
        assert_eq!(run(&mut s, 0, "LSET l 9 A"), "-ERR index out of range\r\n");
        assert_eq!(run(&mut s, 0, "LSET nolist 0 A"), "-ERR no such key\r\n");
        assert_eq!(run(&mut s, 0, "RPOP l"), "$1\r\nc\r\n");
        assert!(run(&mut s, 0, "GET l").starts_with("-WRONGTYPE"));
        assert_eq!(run(&mut s, 0, "SADD s x y x"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "SCARD s"), ":2\r\n");
        assert!(run(&mut s, 0, "SPOP s").starts_with("$1\r\n"));
        assert_eq!(run(&mut s, 0, "HSET h f v g w"), ":2\r\n");
        assert_eq!(run(&mut s, 0, "HGET h g"), "$1\r\nw\r\n");
        assert_eq!(run(&mut s, 0, "HINCRBY h n 5"), ":5\r\n");
        assert_eq!(run(&mut s, 0, "HINCRBY h n -7"), ":-2\r\n");
        assert_eq!(run(&mut s, 0, "HINCRBY h f 1"), "-ERR hash value is not an integer\r\n");
        assert_eq!(run(&mut s, 0, "ZADD z 2 b 1 a 3 c"), ":3\r\n");
        assert_eq!(run(&mut s, 0, "ZADD z 0 c"), ":0\r\n");
        assert_eq!(run(&mut s, 0, "ZPOPMIN z"), "*2\r\n$1\r\nc\r\n$1\r\n0\r\n");
        assert_eq!(run(&mut s, 0, "ZRANGE z 0 -1"), "*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(run(&mut s, 0, "TYPE z"), "+zset\r\n");
    }

    #[test]
    fn keys_and_scans_match_patterns() {
        let mut s = Store::default();
        for i in 0..1000 {
            run(&mut s, 0, &format!("SET user:{i} x"));
        }
        run(&mut s, 0, "SET other y");
        let keys = run(&mut s, 0, "KEYS user:99?");
        assert!(keys.starts_with("*10\r\n"), "{keys}");
        assert!(run(&mut s, 0, "KEYS *").starts_with("*1001\r\n"));
        // A full SCAN returns every key once, whatever the batch.
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = "0".to_string();
        let mut calls = 0;
        loop {
            let reply = run(&mut s, 0, &format!("SCAN {cursor} MATCH user:* COUNT 7"));
            let lines: Vec<&str> = reply.split("\r\n").collect();
            cursor = lines[2].to_string();
            for l in lines.iter().skip(5).step_by(2) {
                if !l.is_empty() {
                    assert!(seen.insert(l.to_string()), "{l} returned twice");
                }
            }
            calls += 1;
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 1000);
        assert!(calls > 10, "{calls} calls");
        assert_eq!(run(&mut s, 0, "SCAN x"), "-ERR invalid cursor\r\n");
        run(&mut s, 0, "SADD set a b c");
        assert!(run(&mut s, 0, "SSCAN set 0").starts_with("*2\r\n$1\r\n0\r\n*3\r\n"));
        run(&mut s, 0, "HSET h f1 v1 f2 v2");
        let h = run(&mut s, 0, "HSCAN h 0 MATCH f1");
        assert_eq!(h, "*2\r\n$1\r\n0\r\n*2\r\n$2\r\nf1\r\n$2\r\nv1\r\n");
        let typed = run(&mut s, 0, "SCAN 0 TYPE set COUNT 100000");
        assert_eq!(typed, "*2\r\n$1\r\n0\r\n*1\r\n$3\r\nset\r\n");
    }

    #[test]
    fn transactions() {
        let mut s = Store::default();
        let mut session = Session::default();
        assert_eq!(run_in(&mut s, &mut session, 0, "MULTI"), "+OK\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "SET k 1"), "+QUEUED\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "INCR k"), "+QUEUED\r\n");
        assert_eq!(run(&mut s, 0, "GET k"), "$-1\r\n", "nothing runs before EXEC");
        assert_eq!(run_in(&mut s, &mut session, 0, "EXEC"), "*2\r\n+OK\r\n:2\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "EXEC"), "-ERR EXEC without MULTI\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "MULTI"), "+OK\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "MULTI"), "-ERR MULTI calls can not be nested\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "INCR k"), "+QUEUED\r\n");
        assert_eq!(run_in(&mut s, &mut session, 0, "DISCARD"), "+OK\r\n");
        assert_eq!(run(&mut s, 0, "GET k"), "$1\r\n2\r\n");
        // A refused command aborts the transaction.
        assert_eq!(run_in(&mut s, &mut session, 0, "MULTI"), "+OK\r\n");
        assert!(run_in(&mut s, &mut session, 0, "GET").starts_with("-ERR wrong number"));
        assert_eq!(run_in(&mut s, &mut session, 0, "INCR k"), "+QUEUED\r\n");
        assert!(run_in(&mut s, &mut session, 0, "EXEC").starts_with("-EXECABORT"));
        assert_eq!(run(&mut s, 0, "GET k"), "$1\r\n2\r\n");
    }

    #[test]
    fn errors_name_the_command() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, 0, "GET"), "-ERR wrong number of arguments for 'get' command\r\n");
        assert_eq!(run(&mut s, 0, "NOPE x y"), "-ERR unknown command 'NOPE', with args beginning with: 'x' 'y' \r\n");
        assert_eq!(run(&mut s, 0, "CONFIG GET save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    }
}
