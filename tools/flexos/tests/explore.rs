//! `flexos explore`: enumeration counts, the safety order on spaces whose
//! answer is known by hand, the search against exhaustive measurement
//! (sound on a monotone cost function, violations reported on a
//! non-monotone one), resuming after an interruption, the plan / worker /
//! merge path with two worker processes, space errors, and one real
//! exploration of SQLite images.

use flexos::explore::enumerate::{Candidate, enumerate};
use flexos::explore::model::Calls;
use flexos::explore::search::{Exploration, Measurer, Outcome, Settings, Store, explore};
use flexos::explore::space::{self, Space};
use flexos::explore::{db::Db, measure::SyntheticMeasurer, order::Order};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    flexos::workspace_root()
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("flexos-explore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn space_text(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

fn parse(text: &str) -> Space {
    space::parse(&root().join("spaces/test.toml"), text).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The synthetic analogue of kv-flexos with another budget and jitter.
fn synthetic(budget: f64, jitter: f64) -> Space {
    let text = space_text("tools/flexos/tests/spaces/synthetic-kv.toml")
        .replace("at-least = 400000", &format!("at-least = {budget}"))
        .replace("base = 1000000", &format!("base = 1000000\njitter = {jitter}"));
    parse(&text)
}

/// Counts what the search asks for; can stop (panic) after `stop_after` configurations.
struct Counting {
    inner: SyntheticMeasurer,
    measured: usize,
    stop_after: Option<usize>,
}

impl Measurer for Counting {
    fn calls(&mut self, baseline: &Candidate) -> Result<Calls, String> {
        self.inner.calls(baseline)
    }
    fn measure(&mut self, batch: &[&Candidate], note: &mut dyn FnMut(&str)) -> Vec<Outcome> {
        let mut out = Vec::new();
        for c in batch {
            if self.stop_after.is_some_and(|s| self.measured >= s) {
                panic!("interrupted");
            }
            out.extend(self.inner.measure(&[c], note));
            self.measured += 1;
        }
        out
    }
}

/// A store in memory.
#[derive(Default)]
struct Memory {
    outcomes: BTreeMap<String, Outcome>,
    calls: Option<Calls>,
}

impl Store for Memory {
    fn outcome(&mut self, c: &Candidate) -> Option<Outcome> {
        self.outcomes.get(&c.toml).cloned()
    }
    fn keep(&mut self, c: &Candidate, o: &Outcome) -> Result<(), String> {
        self.outcomes.insert(c.toml.clone(), o.clone());
        Ok(())
    }
    fn calls(&mut self, _: &Candidate) -> Option<Calls> {
        self.calls.clone()
    }
    fn keep_calls(&mut self, _: &Candidate, calls: &Calls) -> Result<(), String> {
        self.calls = Some(calls.clone());
        Ok(())
    }
}

fn run(space: &Space, settings: &Settings, store: &mut dyn Store, stop_after: Option<usize>) -> (Exploration, usize) {
    let inner = SyntheticMeasurer::new(space).expect("a synthetic space");
    let mut m = Counting { inner, measured: 0, stop_after };
    let x = explore(space, enumerate(space, true), &mut m, store, settings, &mut |_| {}).unwrap();
    (x, m.measured)
}

fn ids(x: &Exploration, list: &[usize]) -> Vec<String> {
    list.iter().map(|&i| x.enumeration.candidates[i].id.clone()).collect()
}

#[test]
fn the_shipped_spaces_enumerate_to_the_expected_counts() {
    let kv = space::load(&root().join("spaces/kv-flexos.toml")).unwrap();
    let e = enumerate(&kv, true);
    // FlexOS: 144 permutations, 80 distinct configurations.
    assert_eq!((e.labeled, e.duplicates, e.candidates.len()), (144, 64, 80));
    assert!(e.invalid.is_empty(), "{:?}", e.invalid);
    let sqlite = space::load(&root().join("spaces/sqlite-small.toml")).unwrap();
    let e = enumerate(&sqlite, true);
    assert_eq!(e.candidates.len(), 22, "11 placements x 2 hardening choices");
    assert!((12..=40).contains(&e.candidates.len()));
}

#[test]
fn symmetric_duplicates_and_invalid_configurations_are_counted() {
    // Three movable groups, up to 4 compartments, 2 mechanisms: the
    // placements are the set partitions of {default, net, sched, time}
    // (15), each extra block with either mechanism: 1 + 7*2 + 6*4 + 1*8 = 47.
    // netdev cannot run in a VM: the 18 with the network stack in a kvm
    // compartment are invalid (half of the 36 that move it).
    let s = parse(
        "app = \"kv\"\n[workload]\nkind = \"synthetic\"\n[budget]\nmetric = \"ops/s\"\nat-least = 1\n\
         [placement]\nmovable = [\"net\", \"sched\", \"time\"]\nmax-compartments = 4\nmechanisms = [\"proc\", \"kvm\"]\n",
    );
    let e = enumerate(&s, true);
    assert_eq!(e.labeled, 4usize.pow(3) * 2usize.pow(3));
    assert_eq!(e.candidates.len() + e.invalid.values().sum::<usize>(), 47);
    assert_eq!(e.invalid.values().sum::<usize>(), 18, "{:?}", e.invalid);
    assert!(e.invalid.keys().all(|k| k.contains("kvm")), "{:?}", e.invalid);
    // Every candidate is a configuration the checker accepts, and no two are the same.
    let mut texts: Vec<&str> = e.candidates.iter().map(|c| c.toml.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 29);
    // Each option alone: 2 options for one component give 4 choices.
    let each = parse(
        "app = \"kv\"\n[workload]\nkind = \"synthetic\"\n[budget]\nmetric = \"ops/s\"\nat-least = 1\n\
         [hardening]\ncomponents = [\"kv\"]\nbundle = false\noptions = [\"overflow-checks\", \"debug-assertions\"]\n",
    );
    assert_eq!(enumerate(&each, true).candidates.len(), 4);
}

#[test]
fn the_order_of_the_kv_space_is_the_one_worked_out_by_hand() {
    let kv = space::load(&root().join("spaces/kv-flexos.toml")).unwrap();
    let e = enumerate(&kv, true);
    let order = Order::new(&e.candidates);
    // Placements (unhardened): one < net alone, sched alone, together < apart;
    // net alone and together are incomparable (each separates a pair the other does not).
    let find = |net: usize, sched: usize| {
        e.candidates.iter().position(|c| c.slot == vec![net, sched] && c.harden.iter().all(Vec::is_empty)).unwrap()
    };
    let (one, net, sched, together, apart) = (find(0, 0), find(1, 0), find(0, 1), find(1, 1), find(1, 2));
    let edges = order.hasse();
    for (lo, up) in [(one, net), (one, sched), (one, together), (net, apart), (sched, apart), (together, apart)] {
        assert!(edges.contains(&(lo, up)), "{lo} -> {up} is an edge");
    }
    assert!(!edges.contains(&(one, apart)), "not a cover");
    assert!(!order.geq(net, together) && !order.geq(together, net));
    // 6 placement edges x 16 hardening subsets + 5 placements x 32 edges of the 4-cube.
    assert_eq!(edges.len(), 6 * 16 + 5 * 32);
    // More hardening is safer; less is not.
    let hardened = e
        .candidates
        .iter()
        .position(|c| c.slot == vec![0, 0] && c.harden[0].len() == 4 && c.harden[1..].iter().all(Vec::is_empty))
        .unwrap();
    assert!(order.above(hardened, one) && !order.geq(one, hardened));
}

#[test]
fn proc_and_kvm_are_incomparable_and_shared_stacks_are_weaker() {
    let base = "app = \"sqlite\"\n[workload]\nkind = \"synthetic\"\n[budget]\nmetric = \"ops/s\"\nat-least = 1\n[placement]\nmovable = [\"time\"]\n";
    let s = parse(&format!("{base}mechanisms = [\"proc\", \"kvm\"]\n"));
    let e = enumerate(&s, true);
    assert_eq!(e.candidates.len(), 3);
    let o = Order::new(&e.candidates);
    assert_eq!(o.hasse().len(), 2, "one -> proc, one -> kvm");
    assert!(!o.geq(1, 2) && !o.geq(2, 1));
    let s =
        parse(&format!("{base}mechanisms = [\"mpk/shared-stack\", \"mpk/dss\"]\ndefault-mechanism = \"mpk/dss\"\n"));
    let e = enumerate(&s, false);
    let o = Order::new(&e.candidates);
    assert_eq!(o.hasse(), vec![(0, 1), (1, 2)], "one < shared-stack < dss");
    // Without protection keys the mpk configurations are listed as not runnable, not dropped.
    assert_eq!(e.unrunnable(), 3);
}

#[test]
fn the_search_finds_the_exhaustive_maximal_set_on_a_monotone_cost_and_measures_less() {
    for budget in [300_000.0, 450_000.0, 550_000.0, 650_000.0, 800_000.0, 950_000.0] {
        let s = synthetic(budget, 0.0);
        let (x, measured) = run(&s, &Settings::default(), &mut Memory::default(), None);
        let (all, all_measured) =
            run(&s, &Settings { exhaustive: true, ..Settings::default() }, &mut Memory::default(), None);
        assert_eq!(all_measured, 80);
        assert_eq!(ids(&x, &x.maximal), ids(&all, &all.maximal), "budget {budget}");
        assert!(measured * 2 <= 80, "budget {budget}: measured {measured}");
        assert!(all.non_monotone.is_empty());
        // Sound: every configuration the search did not measure is below one
        // it measured to meet the budget, or fails the budget in truth.
        let order = Order::new(&x.enumeration.candidates);
        for i in (0..80).filter(|&i| x.value(i).is_none()) {
            let below_a_pass = (0..80).any(|j| x.value(j).is_some() && x.meets(j) && order.above(j, i));
            assert!(
                below_a_pass || !all.meets(i),
                "budget {budget}: {} skipped but meets it",
                all.enumeration.candidates[i].id
            );
        }
    }
}

/// A budget written as a share of the baseline (the one-compartment
/// image without hardening, measured in calibration) decides as the same
/// bound written as a number; a malformed share is refused with the fix.
#[test]
fn a_budget_can_be_a_share_of_the_baseline() {
    for (share, bound) in [("40%", 400_000.0), ("65%", 650_000.0), ("95%", 950_000.0)] {
        let absolute = synthetic(bound, 0.0);
        let relative = parse(&absolute.text.replace(&format!("at-least = {bound}"), &format!("at-least = {share:?}")));
        assert_eq!(relative.budget.relative, Some(bound / 1e6));
        let (x, _) = run(&absolute, &Settings::default(), &mut Memory::default(), None);
        let (y, _) = run(&relative, &Settings::default(), &mut Memory::default(), None);
        assert!((y.budget.bound - bound).abs() < 1e-6, "{share}: {}", y.budget.bound);
        assert_eq!(ids(&x, &x.maximal), ids(&y, &y.maximal), "{share}");
        let text = flexos::explore::report::table(&relative, &y);
        assert!(text.contains(&format!("ops/s >= {} of the baseline ({bound})", share)), "{text}");
    }
    for bad in ["\"-5%\"", "\"fast\"", "0"] {
        let text = synthetic(400_000.0, 0.0).text.replace("at-least = 400000", &format!("at-least = {bad}"));
        let e = space::parse(&root().join("spaces/test.toml"), &text).unwrap_err();
        assert!(e[0].message.contains("positive number or a positive percentage"), "{bad}: {e:?}");
        assert!(e[0].fix.contains("at-least = \"72%\""), "{bad}: {e:?}");
    }
}

/// With the measured cost of every hardening option per component
/// (`[hardening] costs`, here exactly the synthetic cost function's), the
/// search skips the four hardening calibration runs, predicts hardened
/// configurations from the table, and finds the same maximal set as
/// exhaustive measurement.
#[test]
fn measured_hardening_costs_replace_the_calibration_runs() {
    use flexos::hardenbench::{Cost, Table};
    let scratch = Scratch::new("costs");
    // The synthetic space: 1e6 ops/s (1000 ns per op) and per option
    // hardening-ns of the group's first member (netdev costs nothing).
    let ns = [("kv", 120.0), ("net", 90.0), ("netdev", 0.0), ("sched", 20.0), ("time", 10.0)];
    let options = ["overflow-checks", "debug-assertions", "stack-protector", "cfi"];
    let costs = ns
        .iter()
        .flat_map(|(c, n)| {
            options.iter().map(move |o| Cost {
                component: c.to_string(),
                option: o.to_string(),
                median: 0.0,
                time_ratio: 1.0 + n / 1000.0,
            })
        })
        .collect();
    let table = Table {
        app: "kv".into(),
        metric: "ops/s".into(),
        unhardened: 1e6,
        runs: 1,
        machine: "synthetic".into(),
        costs,
    };
    let file = scratch.0.join("costs.json");
    std::fs::write(&file, serde_json::to_string(&table).unwrap()).unwrap();
    for budget in [450_000.0, 650_000.0, 950_000.0] {
        let plain = synthetic(budget, 0.0);
        let with = parse(&format!("{}costs = {:?}\n", plain.text, file.display().to_string()));
        assert!(with.hardening_costs.is_some());
        let (x, _) = run(&plain, &Settings::default(), &mut Memory::default(), None);
        let (y, _) = run(&with, &Settings::default(), &mut Memory::default(), None);
        let (all, _) = run(&plain, &Settings { exhaustive: true, ..Settings::default() }, &mut Memory::default(), None);
        assert_eq!(y.calibration.len() + 4, x.calibration.len(), "budget {budget}");
        assert_eq!(ids(&y, &y.maximal), ids(&all, &all.maximal), "budget {budget}");
        // The prior is the table's: 4 options x 120 ns on 1000 ns for kv.
        let base = y.model.coefficients["base"];
        let kv = y.model.coefficients["harden kv"];
        assert!((kv / base - 0.48).abs() < 0.05, "budget {budget}: {kv} / {base}");
    }
    // A ratio below 1 is noise, not a hardening that saves work: it is priced at 0.
    let mut faster = table.clone();
    for c in &mut faster.costs {
        c.time_ratio = if c.component == "kv" { 0.9 } else { 1.02 };
    }
    std::fs::write(&file, serde_json::to_string(&faster).unwrap()).unwrap();
    let s = parse(&format!("{}costs = {:?}\n", synthetic(450_000.0, 0.0).text, file.display().to_string()));
    let priors = flexos::explore::model::hardening_priors(&s);
    assert_eq!(priors["harden kv"], 0.0, "{priors:?}");
    assert!((priors["harden sched"] - 0.08).abs() < 1e-9, "4 options at 2%: {priors:?}");
    // A table for another application is refused, naming the fix.
    let mut kv_table = table.clone();
    kv_table.app = "sqlite".into();
    std::fs::write(&file, serde_json::to_string(&kv_table).unwrap()).unwrap();
    let text = format!("{}costs = {:?}\n", synthetic(450_000.0, 0.0).text, file.display().to_string());
    let e = space::parse(&root().join("spaces/test.toml"), &text).unwrap_err();
    assert!(e[0].message.contains("are for app \"sqlite\", not \"kv\""), "{e:?}");
    assert!(e[0].fix.contains("flexos bench hardening --app kv"), "{e:?}");
}

/// One call into one component can carry far more work than one into
/// another (a network round against a scheduler yield). Priced per kind of
/// boundary and callee, the model predicts every configuration of such a
/// space exactly from its calibration runs; one price per kind (the model
/// before, the negative control) cannot fit it even given every
/// configuration's measurement.
#[test]
fn crossings_are_priced_per_kind_and_callee() {
    use flexos::explore::model::{Features, Model, features};
    // A round into net every 100 operations at 40 µs; the scheduler's
    // crossings stay at 150 ns.
    let text = space_text("tools/flexos/tests/spaces/synthetic-kv.toml")
        .replace("\"kv->net\" = 2.0", "\"kv->net\" = 0.01")
        .replace("gate-ns = { proc = 150.0 }", "gate-ns = { proc = 150.0, \"proc net\" = 40000.0 }");
    let s = parse(&text);
    let (x, measured) = run(&s, &Settings { exhaustive: true, ..Settings::default() }, &mut Memory::default(), None);
    assert_eq!(measured, 80);
    // Calibration: the base, a proc crossing into net, one into sched.
    assert!(x.model.coefficients.contains_key("gate proc net") && x.model.coefficients.contains_key("gate proc sched"));
    let mape = x.model_mape.unwrap();
    assert!(mape < 1e-6, "every prediction made before measuring is exact: {mape}");
    let ratio = x.model.coefficients["gate proc net"] / x.model.coefficients["gate proc sched"];
    assert!((ratio - 40_000.0 / 150.0).abs() < 0.01, "{ratio}: {:?}", x.model);

    // The negative control: every crossing of a kind at one price.
    let calls = SyntheticMeasurer::new(&s).unwrap().calls(x.enumeration.baseline().unwrap()).unwrap();
    let per_kind: Vec<Features> = x
        .enumeration
        .candidates
        .iter()
        .map(|c| {
            let mut f = Features::new();
            for (k, v) in features(&s, &calls, c) {
                let k = if k.starts_with("gate ") { k.rsplit_once(' ').unwrap().0.to_string() } else { k };
                *f.entry(k).or_default() += v;
            }
            f
        })
        .collect();
    let cost = |i: usize| x.budget.cost(x.value(i).unwrap());
    let data: Vec<(&Features, f64)> = per_kind.iter().enumerate().map(|(i, f)| (f, cost(i))).collect();
    let coarse = Model::fit(&data);
    let worst = (0..80).map(|i| (coarse.cost(&per_kind[i]) - cost(i)).abs() / cost(i)).fold(0.0, f64::max);
    assert!(worst > 0.10, "one price per kind errs by more than 10% somewhere: {worst}");

    // A price for a component the application lacks is refused.
    let bad = text.replace("\"proc net\" = 40000.0", "\"proc sqlite\" = 1.0");
    let e = space::parse(&root().join("spaces/test.toml"), &bad).unwrap_err();
    assert!(e[0].message.contains("\"proc sqlite\" is not a mechanism"), "{e:?}");
    // netdev moves with net: a price into it would never apply, so it is refused.
    let bad = text.replace("\"proc net\" = 40000.0", "\"proc netdev\" = 1.0");
    let e = space::parse(&root().join("spaces/test.toml"), &bad).unwrap_err();
    assert!(e[0].message.contains("netdev moves with net"), "{e:?}");
    assert!(e[0].fix.contains("\"net\""), "{e:?}");
}

/// The synthetic kv space whose measurements show their noise: 5 runs each,
/// spread by `spread` around a value that is off by up to `jitter`.
fn noisy(budget: f64, jitter: f64, spread: f64) -> Space {
    let text = space_text("tools/flexos/tests/spaces/synthetic-kv.toml")
        .replace("at-least = 400000", &format!("at-least = {budget}"))
        .replace("runs = 1", "runs = 5")
        .replace("base = 1000000", &format!("base = 1000000\njitter = {jitter}\nspread = {spread}"));
    parse(&text)
}

/// Where noise breaks the order, a configuration that failed its budget by
/// less than its runs' noise says nothing of the safer ones above it: the
/// search measures those instead of taking them to fail, and finds the
/// exhaustive maximal set. The negative control: the same values with runs
/// that hide their noise (every run equal) make the search take a safer
/// configuration that meets the budget to fail, and miss a maximal one.
#[test]
fn a_failure_within_its_noise_does_not_condemn_safer_configurations() {
    let budgets = [450_000.0, 500_000.0, 550_000.0, 600_000.0, 650_000.0, 700_000.0, 750_000.0];
    let mut missed_when_hidden = 0;
    for budget in budgets {
        for (spread, hidden) in [(0.1, false), (0.0, true)] {
            let s = noisy(budget, 0.06, spread);
            let (x, measured) = run(&s, &Settings::default(), &mut Memory::default(), None);
            let (all, _) = run(&s, &Settings { exhaustive: true, ..Settings::default() }, &mut Memory::default(), None);
            if hidden {
                missed_when_hidden += usize::from(ids(&x, &x.maximal) != ids(&all, &all.maximal));
            } else {
                assert_eq!(ids(&x, &x.maximal), ids(&all, &all.maximal), "budget {budget}");
                assert!(measured * 2 <= 80, "budget {budget}: measured {measured}");
            }
        }
    }
    assert!(missed_when_hidden > 0, "with the noise hidden, some budget's maximal set is missed");
    // Noise is a fraction; anything else is refused with the fix.
    for bad in ["spread = 1.5", "spread = -0.1", "jitter = 2"] {
        let text = space_text("tools/flexos/tests/spaces/synthetic-kv.toml").replace("runs = 1", bad);
        let e = space::parse(&root().join("spaces/test.toml"), &text).unwrap_err();
        assert!(e[0].message.contains("must be a fraction in [0, 1)"), "{bad}: {e:?}");
        assert!(e[0].fix.contains("0.05"), "{bad}: {e:?}");
    }
}

#[test]
fn non_monotone_edges_are_reported() {
    let s = synthetic(500_000.0, 0.3);
    let (all, _) = run(&s, &Settings { exhaustive: true, ..Settings::default() }, &mut Memory::default(), None);
    assert!(!all.non_monotone.is_empty(), "a 30% jitter breaks some edges");
    for &(lo, up) in &all.non_monotone {
        assert!(all.value(up).unwrap() > all.value(lo).unwrap() * 1.02, "{lo} -> {up}");
        assert!(all.edges.contains(&(lo, up)));
    }
    // On the monotone function no edge is reported, whatever the budget.
    let (mono, _) = run(
        &synthetic(500_000.0, 0.0),
        &Settings { exhaustive: true, ..Settings::default() },
        &mut Memory::default(),
        None,
    );
    assert!(mono.non_monotone.is_empty());
    // And the search reports only edges that really broke.
    let (x, _) = run(&s, &Settings::default(), &mut Memory::default(), None);
    assert!(x.non_monotone.iter().all(|e| all.non_monotone.contains(e)));
}

#[test]
fn an_interrupted_exploration_resumes_from_the_database() {
    let dir = Scratch::new("resume");
    let s = synthetic(500_000.0, 0.0);
    let settings = Settings { exhaustive: true, batch: 1, ..Settings::default() };
    let db_path = dir.0.join("results.db");
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut db = Db::open(&db_path, &s).unwrap();
        run(&s, &settings, &mut db, Some(30))
    }));
    assert!(interrupted.is_err(), "the first run stops after 30 configurations");
    let mut db = Db::open(&db_path, &s).unwrap();
    assert_eq!(db.len(), 30, "what was measured before the interruption is kept");
    let (x, measured) = run(&s, &settings, &mut db, None);
    assert_eq!(measured, 50, "only the rest is measured");
    assert_eq!(x.reused, 30);
    let (fresh, _) = run(&s, &settings, &mut Memory::default(), None);
    assert_eq!(ids(&x, &x.maximal), ids(&fresh, &fresh.maximal));
    for i in 0..80 {
        assert_eq!(x.value(i), fresh.value(i));
    }
    // A second exploration of the same space (another budget) measures nothing.
    let other = synthetic(700_000.0, 0.0);
    let mut db = Db::open(&db_path, &other).unwrap();
    let (_, measured) = run(&other, &Settings::default(), &mut db, None);
    assert_eq!(measured, 0);
}

fn flexos(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flexos")).args(args).envs(envs.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn two_workers_and_a_merge_give_the_report_of_one_process() {
    let dir = Scratch::new("shards");
    let space = root().join("tools/flexos/tests/spaces/synthetic-kv.toml");
    let plan = dir.0.join("plan");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let (code, out, err) = flexos(&["explore", "plan", &p(&space), "--out", &p(&plan)], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("81 jobs"), "{out}");
    // Two workers at once: one told its shard, one reading Slurm's variables.
    let bin = env!("CARGO_BIN_EXE_flexos");
    let w0 = Command::new(bin).args(["explore", "worker", &p(&plan), "--shard", "0/2", "-q"]).spawn().unwrap();
    let w1 = Command::new(bin)
        .args(["explore", "worker", &p(&plan), "-q"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(w1.status.success(), "{}", String::from_utf8_lossy(&w1.stderr));
    assert!(
        String::from_utf8_lossy(&w1.stdout).contains("shard 1/2: measured 40"),
        "{}",
        String::from_utf8_lossy(&w1.stdout)
    );
    assert!(w0.wait_with_output().unwrap().status.success());
    let merged = dir.0.join("merged.json");
    let (code, out, err) = flexos(&["explore", "merge", &p(&plan), "--json", &p(&merged), "-q"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let one = dir.0.join("one.json");
    let db = dir.0.join("one.db");
    let (code, out, err) =
        flexos(&["explore", &p(&space), "--exhaustive", "--db", &p(&db), "--json", &p(&one), "-q"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (a, b) = (json(&merged), json(&one));
    for key in ["total", "measured", "maximal", "edges", "non_monotone_edges", "model_mape", "configurations"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(a["measured"], 80);
}

#[test]
fn the_report_has_every_field_and_every_configuration_can_be_written_and_checked() {
    let dir = Scratch::new("report");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let space = root().join("tools/flexos/tests/spaces/synthetic-kv.toml");
    let (j, svg, configs, db) = (dir.0.join("r.json"), dir.0.join("r.svg"), dir.0.join("configs"), dir.0.join("r.db"));
    let (code, out, err) = flexos(
        &[
            "explore",
            &p(&space),
            "--db",
            &p(&db),
            "--json",
            &p(&j),
            "--svg",
            &p(&svg),
            "--write-configs",
            &p(&configs),
            "-q",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the safest configurations that meet the budget"), "{out}");
    let r = json(&j);
    assert_eq!(r["total"], 80);
    assert!(r["measured"].as_u64().unwrap() <= 40);
    assert!(r["model_mape"].as_f64().unwrap() < 1e-6, "the synthetic cost is the model's form");
    let configs_json = r["configurations"].as_array().unwrap();
    assert_eq!(configs_json.len(), 80);
    for c in configs_json {
        for key in ["id", "config", "predicted", "measured", "meets_budget", "above"] {
            assert!(c.get(key).is_some(), "{key} in {c}");
        }
    }
    let maximal = r["maximal"].as_array().unwrap();
    assert!(!maximal.is_empty());
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("budget") && svg.matches("<circle").count() >= 80);
    // Written configurations are ordinary ones.
    for m in maximal {
        let file = configs.join(format!("{}.toml", m.as_str().unwrap()));
        let (code, out, err) = flexos(&["check", &p(&file)], &[]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert_eq!(std::fs::read_dir(&configs).unwrap().count(), 80);
}

#[test]
fn a_bad_space_is_rejected_with_location_and_fix() {
    let dir = Scratch::new("bad");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "app = \"kv\"\n[workload]\nkind = \"redis-benchmark\"\n[budget]\nmetric = \"GET requests/s\"\nat-least = 1\n[placement]\nmovable = [\"nett\"]\nmechanisms = [\"prc\"]\n",
    )
    .unwrap();
    let (code, _, err) = flexos(&["explore", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.toml:8:12: error: \"nett\" is not a component of the kv image"), "{err}");
    assert!(err.contains("bad.toml:9:15: error: unknown mechanism \"prc\""), "{err}");
    assert!(err.contains("fix: "), "{err}");
}

/// A real exploration: SQLite images built and measured, twice (the second
/// time everything comes from the database).
#[test]
fn a_small_sqlite_space_is_built_measured_and_reused() {
    let dir = Scratch::new("sqlite");
    let space = dir.0.join("space.toml");
    std::fs::write(
        &space,
        format!(
            "app = \"sqlite\"\nfiles = {:?}\n[workload]\nkind = \"sqlite-insert\"\nrows = 500\nruns = 1\n\
             [budget]\nmetric = \"seconds\"\nat-most = 30\n[placement]\nmovable = [\"time\"]\nmechanisms = [\"proc\"]\n",
            root().join("apps/sqlite/files").display().to_string()
        ),
    )
    .unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let (j, db) = (dir.0.join("r.json"), dir.0.join("r.db"));
    let args = ["explore", &p(&space), "--db", &p(&db), "--json", &p(&j), "-q"];
    let (code, out, err) = flexos(&args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let r = json(&j);
    assert_eq!(r["total"], 2);
    assert_eq!(r["measured"], 2);
    assert_eq!(r["maximal"], serde_json::json!(["c001"]), "time in a process of its own is safer and within 30 s");
    let c1 = &r["configurations"][1];
    assert!(c1["config"].as_str().unwrap().contains("mechanism = \"proc\""));
    assert!(c1["measured"].as_f64().unwrap() > 0.0);
    let (code, out, err) = flexos(&args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&j)["reused"], 2, "{out}");
}

/// Fast builds: a new configuration starts from the target folder of the
/// last one built (its dependencies are not compiled again), and two new
/// configurations built at once by two processes both come out right.
#[test]
fn new_configurations_reuse_what_was_built_and_build_side_by_side() {
    let dir = Scratch::new("builds");
    let files = root().join("apps/sqlite/files");
    let config = |name: &str, mechanism: &str| {
        let path = dir.0.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "app = \"sqlite\"\nfiles = {:?}\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n\
                 [[compartment]]\nname = \"clock\"\nmechanism = \"{mechanism}\"\n[component.time]\ncompartment = \"clock\"\n\
                 # {name} {}\n",
                files.display().to_string(),
                std::process::id()
            ),
        )
        .unwrap();
        path
    };
    let bin = env!("CARGO_BIN_EXE_flexos");
    // Something to start from.
    assert!(
        Command::new(bin)
            .args(["build", "-q", "--gate-stats", "configs/sqlite.toml"])
            .current_dir(root())
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::SystemTime::now();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // coarse file times
    let (a, b) = (config("a", "fcall"), config("b", "proc"));
    let spawn = |c: &Path| Command::new(bin).args(["build", "-q", "--gate-stats"]).arg(c).output().unwrap();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| spawn(&a));
        let tb = s.spawn(|| spawn(&b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        assert!(r.status.success(), "{}: {}", c.display(), String::from_utf8_lossy(&r.stderr));
        let image = PathBuf::from(String::from_utf8_lossy(&r.stdout).lines().last().unwrap().trim());
        let out = Command::new(&image).args(["--flexos-gate-stats", "--rows", "100"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("layout {}", c.canonicalize().unwrap().display())), "{err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("rows: 100"));
        // The bundled SQLite library of the dependency was copied, not compiled again.
        let build = image.parent().unwrap().join("cargo/release/build");
        // Its build script's output folders (`libsqlite3-sys-HASH/out`; the
        // folder of the compiled build script itself has no `out`).
        let outs: Vec<PathBuf> = std::fs::read_dir(&build)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("libsqlite3-sys-"))
            .map(|e| e.path().join("out"))
            .filter(|out| out.is_dir())
            .collect();
        assert!(!outs.is_empty(), "{}: libsqlite3-sys built", c.display());
        for out in outs {
            let modified = std::fs::metadata(&out).unwrap().modified().unwrap();
            assert!(modified < started, "{}: libsqlite3-sys was compiled again ({})", c.display(), out.display());
        }
    }
}
