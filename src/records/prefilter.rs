//! The user's redaction patterns (`KINESIS_TELEMETRY_REDACT_PATTERNS`) made
//! cheap and safe to run: what each pattern needs before it can match, and
//! whether it can match an empty string.
//!
//! `analyse` reads a pattern (regex-lite's syntax) and works out, without
//! running it, a *factor*: a short run of bytes (or byte classes: `acct-`,
//! `[A-Z][A-Z]07`, `\d\d\d\d`) that every match contains, or a few runs one
//! of which every match contains (`foo|bar`). `Prefilter` looks for the
//! factors of all patterns at once, in one pass over a string (Shift-And:
//! one bit per factor position, a few word operations per byte), so a
//! pattern's regular expression runs only on the strings that hold its
//! factor. A pattern whose factor cannot be worked out runs on every string.
//!
//! The analysis is sound, not exact: a factor may be weaker than it could
//! be (letters of both cases once `(?i)` appears anywhere, any class with a
//! character beyond ASCII counted as unknown) but never asks for something
//! a match could lack. The same analysis says whether a pattern is
//! *nullable*: able to match without consuming a character anywhere, with
//! every assertion (`^`, `$`, `\b`, `\B`, ...) taken as satisfiable. A pattern
//! that can match an empty string at some position is nullable in that
//! sense (the assertions are the only part of a match that depends on the
//! position, and they consume nothing); the reverse can fail only for a
//! pattern whose assertions contradict (`\b\B`), which matches nothing
//! useful either. Patterns the analysis does not follow (verbose mode
//! `(?x)`) are probed instead (`empty_on_probes`).

use regex_lite::Regex;

/// The longest factor searched for: beyond a dozen positions a factor is
/// selective enough, and each position costs a bit per byte scanned.
const MAX_FACTOR: usize = 16;
/// Fixed runs longer than this are kept as their ends only.
const MAX_FIXED: usize = 64;
/// Alternatives kept in a factor (`a|b|…`) before giving up on it.
const MAX_ALTERNATIVES: usize = 8;

/// A set of byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Set([u64; 4]);

impl Set {
    const EMPTY: Set = Set([0; 4]);

    fn byte(b: u8) -> Set {
        let mut s = Set::EMPTY;
        s.add(b);
        s
    }

    fn add(&mut self, b: u8) {
        self.0[usize::from(b / 64)] |= 1 << (b % 64);
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b / 64)] & (1 << (b % 64)) != 0
    }

    fn union(self, o: Set) -> Set {
        Set(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }

    fn range(lo: u8, hi: u8) -> Set {
        let mut s = Set::EMPTY;
        for b in lo..=hi {
            s.add(b);
        }
        s
    }

    /// Both cases of every ASCII letter in the set.
    fn fold(self) -> Set {
        let mut s = self;
        for b in b'A'..=b'Z' {
            if self.contains(b) || self.contains(b + 32) {
                s.add(b);
                s.add(b + 32);
            }
        }
        s
    }

    /// How much finding one of these bytes says, in quarter bits: 32 for
    /// one byte value (8 bits), nothing for any byte.
    fn bits(&self) -> u32 {
        let n: u32 = self.0.iter().map(|w| w.count_ones()).sum::<u32>().max(1);
        // log2(n) in quarter bits, rounded down: ilog2 of n^4.
        32 - u64::from(n).pow(4).ilog2()
    }
}

/// A run of byte positions.
pub type Seq = Vec<Set>;

/// What the analysis found.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// It can match without consuming a character (assertions aside).
    pub nullable: bool,
    /// Every match contains one of these runs; empty when none is known.
    pub factor: Vec<Seq>,
}

/// What is known of a part of a pattern.
#[derive(Debug, Clone)]
struct Info {
    nullable: bool,
    /// Every match is exactly this run (an assertion: the empty run).
    fixed: Option<Seq>,
    /// Every match contains one of these (empty: nothing known).
    need: Vec<Seq>,
}

impl Info {
    fn run(seq: Seq) -> Info {
        if seq.len() > MAX_FIXED {
            return Info {
                nullable: false,
                fixed: None,
                need: vec![best_window(&seq)],
            };
        }
        Info {
            nullable: seq.is_empty(),
            need: if seq.is_empty() {
                vec![]
            } else {
                vec![best_window(&seq)]
            },
            fixed: Some(seq),
        }
    }

    /// One character of unknown bytes (`.`, `\D`, `[^a]`, `[é]`).
    fn any_char() -> Info {
        Info {
            nullable: false,
            fixed: None,
            need: vec![],
        }
    }
}

/// The weakest alternative's worth (what finding the factor says).
fn score(need: &[Seq]) -> u32 {
    let worth = |s: &Seq| s.iter().map(Set::bits).sum::<u32>();
    need.iter().map(worth).min().unwrap_or(0)
}

/// The most telling `MAX_FACTOR` positions of a run.
fn best_window(seq: &[Set]) -> Seq {
    let n = seq.len().min(MAX_FACTOR);
    let start = (0..=seq.len() - n)
        .max_by(|&a, &b| {
            let f = |i: usize| seq[i..i + n].iter().map(Set::bits).sum::<u32>();
            f(a).cmp(&f(b)).then(b.cmp(&a))
        })
        .unwrap_or(0);
    seq[start..start + n].to_vec()
}

fn concat(parts: Vec<Info>) -> Info {
    let nullable = parts.iter().all(|p| p.nullable);
    if parts.iter().all(|p| p.fixed.is_some()) {
        return Info::run(parts.into_iter().flat_map(|p| p.fixed.unwrap()).collect());
    }
    let mut best: Vec<Seq> = vec![];
    let mut consider = |need: Vec<Seq>| {
        if score(&need) > score(&best) {
            best = need;
        }
    };
    let mut run: Seq = vec![];
    for p in parts {
        match p.fixed {
            Some(f) => run.extend(f),
            None => {
                if !run.is_empty() {
                    consider(vec![best_window(&run)]);
                }
                consider(p.need);
                run.clear();
            }
        }
        if run.len() > MAX_FIXED {
            consider(vec![best_window(&run)]);
            run.drain(..run.len() - MAX_FACTOR);
        }
    }
    if !run.is_empty() {
        consider(vec![best_window(&run)]);
    }
    Info {
        nullable,
        fixed: None,
        need: best,
    }
}

fn alternate(branches: Vec<Info>) -> Info {
    if branches.len() == 1 {
        return branches.into_iter().next().unwrap();
    }
    let nullable = branches.iter().any(|b| b.nullable);
    let need: Vec<Seq> = if branches.iter().all(|b| !b.need.is_empty()) {
        branches.iter().flat_map(|b| b.need.clone()).collect()
    } else {
        vec![]
    };
    Info {
        nullable,
        fixed: None,
        need: if need.len() <= MAX_ALTERNATIVES {
            need
        } else {
            vec![]
        },
    }
}

fn repeat(x: Info, min: u32, max: Option<u32>) -> Info {
    if min == 0 {
        return if max == Some(0) {
            Info::run(vec![])
        } else {
            Info {
                nullable: true,
                ..Info::any_char()
            }
        };
    }
    match x.fixed {
        Some(f) if f.len() * min as usize <= MAX_FIXED => {
            let run = Info::run(f.repeat(min as usize));
            if max == Some(min) {
                return run;
            }
            Info { fixed: None, ..run }
        }
        // A long run repeated: every match starts and ends with a copy.
        Some(f) => Info {
            fixed: None,
            ..Info::run(f)
        },
        None => x,
    }
}

struct Parser {
    c: Vec<char>,
    i: usize,
    /// `(?i)` seen: letters match both cases from here on (kept to the end:
    /// wider than regex-lite's scope, so still sound).
    ci: bool,
}

/// What `pattern` needs and whether it can match empty; `None` when its
/// syntax is beyond this analysis (verbose mode) or it does not parse.
pub fn analyse(pattern: &str) -> Option<Analysis> {
    let mut p = Parser {
        c: pattern.chars().collect(),
        i: 0,
        ci: false,
    };
    let info = p.alternation()?;
    if p.i != p.c.len() {
        return None;
    }
    let factor = if info.need.iter().all(|s| s.iter().any(|x| x.bits() > 0)) {
        info.need
    } else {
        vec![]
    };
    Some(Analysis {
        nullable: info.nullable,
        factor,
    })
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let yes = self.peek() == Some(c);
        self.i += usize::from(yes);
        yes
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn alternation(&mut self) -> Option<Info> {
        let mut branches = vec![self.concatenation()?];
        while self.eat('|') {
            branches.push(self.concatenation()?);
        }
        Some(alternate(branches))
    }

    fn concatenation(&mut self) -> Option<Info> {
        let mut parts = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let mut atom = self.atom()?;
            while let Some((min, max)) = self.quantifier()? {
                atom = repeat(atom, min, max);
            }
            parts.push(atom);
        }
        Some(concat(parts))
    }

    /// `?`, `*`, `+`, `{n}`, `{n,}`, `{n,m}` (each maybe lazy): `None` when
    /// there is none; an outer `None` for a malformed one.
    #[allow(clippy::option_option)]
    fn quantifier(&mut self) -> Option<Option<(u32, Option<u32>)>> {
        let q = match self.peek() {
            Some('?') => (0, Some(1)),
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('{') => {
                self.i += 1;
                let min = self.number()?;
                let max = if self.eat(',') {
                    self.skip_spaces();
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(min)
                };
                self.skip_spaces();
                if !self.eat('}') {
                    return None;
                }
                self.eat('?');
                return Some(Some((min, max)));
            }
            _ => return Some(None),
        };
        self.i += 1;
        self.eat('?');
        Some(Some(q))
    }

    fn skip_spaces(&mut self) {
        while self.eat(' ') {}
    }

    fn number(&mut self) -> Option<u32> {
        self.skip_spaces();
        let mut n: Option<u32> = None;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            n = n.unwrap_or(0).checked_mul(10)?.checked_add(d);
            self.i += 1;
        }
        self.skip_spaces();
        n
    }

    fn literal(&self, c: char) -> Info {
        if c.is_ascii() {
            let s = Set::byte(c as u8);
            return Info::run(vec![if self.ci { s.fold() } else { s }]);
        }
        let mut buf = [0; 4];
        Info::run(c.encode_utf8(&mut buf).bytes().map(Set::byte).collect())
    }

    fn atom(&mut self) -> Option<Info> {
        match self.next()? {
            '(' => self.group(),
            '[' => Some(
                self.class()?
                    .map_or_else(Info::any_char, |s| Info::run(vec![s])),
            ),
            '.' => Some(Info::any_char()),
            '^' | '$' => Some(Info::run(vec![])),
            '\\' => self.escape(),
            '*' | '+' | '?' | '{' | ')' | '|' => None,
            c => Some(self.literal(c)),
        }
    }

    fn group(&mut self) -> Option<Info> {
        if self.eat('?') {
            if self.eat('P') || self.peek() == Some('<') {
                self.eat('<');
                while self.next()? != '>' {}
            } else {
                loop {
                    match self.next()? {
                        'x' => return None, // verbose mode: not followed here
                        'i' => self.ci = true,
                        'm' | 's' | 'R' | 'U' | '-' => {}
                        // (A quantifier after it applies to what precedes
                        // it in regex-lite: not followed here.)
                        ')' if matches!(self.peek(), Some('?' | '*' | '+' | '{')) => return None,
                        ')' => return Some(Info::run(vec![])),
                        ':' => break,
                        _ => return None,
                    }
                }
            }
        }
        let inner = self.alternation()?;
        self.eat(')').then_some(inner)
    }

    /// The byte of a one-character escape (`\n`, `\*`, `\x41`...), or `None`.
    fn escaped_char(&mut self, e: char) -> Option<char> {
        let hex = |p: &mut Parser, digits: usize| -> Option<char> {
            let braced = p.eat('{');
            let mut v: u32 = 0;
            for _ in 0..if braced { 9 } else { digits } {
                match p.next()? {
                    '}' if braced => return char::from_u32(v),
                    c => v = v.checked_mul(16)? + c.to_digit(16)?,
                }
            }
            (!braced).then(|| char::from_u32(v))?
        };
        Some(match e {
            'a' => '\x07',
            'f' => '\x0c',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'v' => '\x0b',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            c if c.is_ascii() && !c.is_ascii_alphanumeric() && c != '<' && c != '>' => c,
            _ => return None,
        })
    }

    /// `\d`, `\s`, `\w`: `Some(set)`; `\D`, `\S`, `\W`: `Some(None)`.
    #[allow(clippy::option_option)]
    fn perl_class(e: char) -> Option<Option<Set>> {
        let word = Set::range(b'0', b'9')
            .union(Set::range(b'A', b'Z'))
            .union(Set::range(b'a', b'z'))
            .union(Set::byte(b'_'));
        Some(match e {
            'd' => Some(Set::range(b'0', b'9')),
            's' => Some(Set::range(b'\t', b'\r').union(Set::byte(b' '))),
            'w' => Some(word),
            'D' | 'S' | 'W' => None,
            _ => return None,
        })
    }

    fn escape(&mut self) -> Option<Info> {
        let e = self.next()?;
        match e {
            'b' | 'B' | 'A' | 'z' | '<' | '>' => {
                if e == 'b' && self.eat('{') {
                    while self.next()? != '}' {}
                }
                Some(Info::run(vec![]))
            }
            _ => {
                if let Some(class) = Parser::perl_class(e) {
                    return Some(class.map_or_else(Info::any_char, |s| Info::run(vec![s])));
                }
                let c = self.escaped_char(e)?;
                Some(self.literal(c))
            }
        }
    }

    /// A bracketed class, after its `[`: `Some(Some(set))` when it holds
    /// ASCII characters only, `Some(None)` when it may match other
    /// characters (negated, set operations, beyond ASCII).
    #[allow(clippy::option_option)]
    fn class(&mut self) -> Option<Option<Set>> {
        let mut set = Set::EMPTY;
        let mut known = !self.eat('^');
        let mut first = true;
        loop {
            let c = self.next()?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = match c {
                '[' if self.eat(':') => {
                    let mut name = String::new();
                    loop {
                        match self.next()? {
                            ':' if self.eat(']') => break,
                            c => name.push(c),
                        }
                    }
                    match posix(&name) {
                        Some(s) => set = set.union(s),
                        None => known = false,
                    }
                    continue;
                }
                '[' => {
                    match self.class()? {
                        Some(s) => set = set.union(s),
                        None => known = false,
                    }
                    continue;
                }
                '&' | '-' | '~' if self.peek() == Some(c) => {
                    self.i += 1;
                    known = false; // a set operation: not followed here
                    continue;
                }
                '\\' => {
                    let e = self.next()?;
                    if let Some(class) = Parser::perl_class(e) {
                        match class {
                            Some(s) => set = set.union(s),
                            None => known = false,
                        }
                        continue;
                    }
                    self.escaped_char(e)?
                }
                c => c,
            };
            let mut hi = lo;
            if self.peek() == Some('-') && self.c.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                hi = match self.next()? {
                    '\\' => {
                        let e = self.next()?;
                        self.escaped_char(e)?
                    }
                    '[' | '-' => return None,
                    c => c,
                };
            }
            if lo.is_ascii() && hi.is_ascii() && lo <= hi {
                set = set.union(Set::range(lo as u8, hi as u8));
            } else {
                known = false;
            }
        }
        Some(known.then(|| if self.ci { set.fold() } else { set }))
    }
}

/// `[:name:]` (`^name`: negated, not followed).
fn posix(name: &str) -> Option<Set> {
    let r = Set::range;
    Some(match name {
        "alnum" => r(b'0', b'9').union(r(b'A', b'Z')).union(r(b'a', b'z')),
        "alpha" => r(b'A', b'Z').union(r(b'a', b'z')),
        "ascii" => r(0, 127),
        "blank" => Set::byte(b'\t').union(Set::byte(b' ')),
        "cntrl" => r(0, 31).union(Set::byte(127)),
        "digit" => r(b'0', b'9'),
        "graph" => r(b'!', b'~'),
        "lower" => r(b'a', b'z'),
        "print" => r(b' ', b'~'),
        "punct" => r(b'!', b'/')
            .union(r(b':', b'@'))
            .union(r(b'[', b'`'))
            .union(r(b'{', b'~')),
        "space" => r(b'\t', b'\r').union(Set::byte(b' ')),
        "upper" => r(b'A', b'Z'),
        "word" => r(b'0', b'9')
            .union(r(b'A', b'Z'))
            .union(r(b'a', b'z'))
            .union(Set::byte(b'_')),
        "xdigit" => r(b'0', b'9').union(r(b'A', b'F')).union(r(b'a', b'f')),
        _ => return None,
    })
}

/// For the patterns `analyse` does not follow: whether `re` finds an empty
/// match in strings that put every kind of neighbour (none, a word
/// character, a space, punctuation, a line end, beyond ASCII) on each side
/// of some position. Best effort: a preferred longer match can hide an
/// empty one.
pub fn empty_on_probes(re: &Regex) -> bool {
    const PROBES: [&str; 8] = [
        "",
        "a",
        "a b",
        " a-b\n",
        "\r\nx\r\n",
        "_0é.",
        "é",
        "ab01 \t!",
    ];
    PROBES.iter().any(|p| re.find_iter(p).any(|m| m.is_empty()))
}

/// The factors of many patterns, searched for together.
#[derive(Debug, Clone)]
pub struct Prefilter {
    patterns: usize,
    words: usize,
    /// For each byte value, `words` words: bit k set when position k of
    /// some factor accepts the byte.
    masks: Vec<u64>,
    /// The bytes a factor can start with: while no factor is under way,
    /// other bytes are skipped.
    first: Set,
    /// The same bytes when there are at most three (the usual case: a
    /// literal, or one letter in both cases): skipped to with `memchr`,
    /// which compares many bytes at once.
    first_few: Vec<u8>,
    /// The first / last position of each factor.
    starts: Vec<u64>,
    ends: Vec<u64>,
    /// The pattern whose factor ends at each bit.
    owner: Vec<u32>,
    /// Patterns without a factor: they run on every string.
    always: Vec<usize>,
}

impl Prefilter {
    /// `factors[p]`: pattern p's factor (`Analysis::factor`).
    pub fn new(factors: &[Vec<Seq>]) -> Prefilter {
        let bits: usize = factors.iter().flatten().map(Vec::len).sum();
        let words = bits.div_ceil(64).max(1);
        let mut f = Prefilter {
            patterns: factors.len(),
            words,
            masks: vec![0; 256 * words],
            first: Set::EMPTY,
            first_few: vec![],
            starts: vec![0; words],
            ends: vec![0; words],
            owner: vec![0; words * 64],
            always: vec![],
        };
        let mut bit = 0;
        for (p, alternatives) in factors.iter().enumerate() {
            if alternatives.is_empty() {
                f.always.push(p);
            }
            for seq in alternatives {
                f.first = f.first.union(seq[0]);
                f.starts[bit / 64] |= 1 << (bit % 64);
                for set in seq {
                    for b in 0..=255u8 {
                        if set.contains(b) {
                            f.masks[usize::from(b) * words + bit / 64] |= 1 << (bit % 64);
                        }
                    }
                    bit += 1;
                }
                f.ends[(bit - 1) / 64] |= 1 << ((bit - 1) % 64);
                f.owner[bit - 1] = p as u32;
            }
        }
        let first: Vec<u8> = (0..=255u8).filter(|b| f.first.contains(*b)).collect();
        if first.len() <= 3 {
            f.first_few = first;
        }
        f
    }

    /// Where in `s` the next byte a factor can start with is.
    fn next_start(&self, s: &[u8]) -> Option<usize> {
        match self.first_few[..] {
            [] if self.first == Set::EMPTY => None,
            [a] => memchr::memchr(a, s),
            [a, b] => memchr::memchr2(a, b, s),
            [a, b, c] => memchr::memchr3(a, b, c, s),
            _ => s.iter().position(|&b| self.first.contains(b)),
        }
    }

    /// Which patterns may match `s` (`out[p]`, others false): those whose
    /// factor occurs in it and those without one.
    pub fn candidates(&self, s: &[u8], out: &mut Vec<bool>) {
        out.clear();
        out.resize(self.patterns, false);
        for &p in &self.always {
            out[p] = true;
        }
        let w = self.words;
        // (On the stack for up to 256 factor positions: this runs on every
        // string of every event.)
        let mut small = [0u64; 4];
        let mut big = Vec::new();
        let state = if w <= small.len() {
            &mut small[..w]
        } else {
            big.resize(w, 0);
            &mut big[..]
        };
        let mut active = false;
        let mut i = 0;
        while i < s.len() {
            if !active {
                match self.next_start(&s[i..]) {
                    Some(j) => i += j,
                    None => break,
                }
            }
            let b = s[i];
            i += 1;
            let m = &self.masks[usize::from(b) * w..][..w];
            let (mut carry, mut hit, mut any) = (0, 0, 0);
            for k in 0..w {
                let d = state[k];
                let nd = ((d << 1) | carry | self.starts[k]) & m[k];
                carry = d >> 63;
                state[k] = nd;
                hit |= nd & self.ends[k];
                any |= nd;
            }
            active = any != 0;
            if hit != 0 {
                for k in 0..w {
                    let mut e = state[k] & self.ends[k];
                    while e != 0 {
                        out[self.owner[k * 64 + e.trailing_zeros() as usize] as usize] = true;
                        e &= e - 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The factor as text: `[..]` for a class, `?` for a case-blind letter.
    fn show(a: &Analysis) -> Vec<String> {
        a.factor
            .iter()
            .map(|seq| {
                seq.iter()
                    .map(|s| {
                        let n: u32 = s.0.iter().map(|w| w.count_ones()).sum();
                        let first = (0..=255u8).find(|b| s.contains(*b)).unwrap();
                        match n {
                            1 => (first as char).to_string(),
                            2 if first.is_ascii_uppercase() && s.contains(first + 32) => {
                                (first as char).to_ascii_lowercase().to_string()
                            }
                            10 if first == b'0' => "\\d".into(),
                            _ => format!("[{n}]"),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn factor(p: &str) -> Vec<String> {
        show(&analyse(p).unwrap())
    }

    #[test]
    fn factors_of_common_patterns() {
        assert_eq!(factor("acct-[0-9]{8}"), ["acct-\\d\\d\\d\\d\\d\\d\\d\\d"]);
        assert_eq!(
            factor(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"),
            ["\\d\\d\\d-\\d\\d-\\d\\d\\d\\d"]
        );
        assert_eq!(factor(r"(?i)token:\s*\w+"), ["token:"]);
        assert_eq!(
            factor(r"[a-z]+_07=[0-9a-f]{12}"),
            ["_07=[16][16][16][16][16][16][16][16][16][16][16][16]"]
        );
        assert_eq!(factor("foo|barbaz"), ["foo", "barbaz"]);
        assert_eq!(factor("(?:ab|cd)ef"), ["ab", "cd"]);
        assert_eq!(
            factor("x+yz"),
            ["yz"],
            "(what a repetition starts or ends with is not used)"
        );
        assert_eq!(factor("ab?c"), ["a"]);
        assert_eq!(factor("caf\u{e9}"), ["caf\u{c3}\u{a9}"]);
        assert_eq!(factor(r"id\x3D\d"), ["id=\\d"]);
        // regex-lite folds ASCII letters only: `(?i)é` needs é itself.
        assert!(!Regex::new("(?i)é").unwrap().is_match("É"));
        assert_eq!(factor("(?i)é"), ["\u{c3}\u{a9}"]);
        for none in [".*", "a|.", r"\D+", "[^a]b?", "[é]"] {
            assert_eq!(factor(none), Vec::<String>::new(), "{none}");
        }
        assert_eq!(analyse("(?x) a b"), None, "verbose mode is not followed");
        assert_eq!(analyse("a(?i)?"), None, "nor a quantifier after flags");
    }

    #[test]
    fn nullable_patterns_are_those_that_can_match_empty() {
        for p in [
            r"\b",
            "^",
            "$",
            "x*",
            "a|",
            "(?:ab)?",
            r"\B",
            r"(?m)^\s*",
            "a{0}",
            "()",
            r"\b{start}",
            "(?i)",
        ] {
            assert!(analyse(p).unwrap().nullable, "{p}");
        }
        for p in ["a", r"\bx\b", "a+", "[ab]", r"\d{1,3}", "(?:a|b)c*", "."] {
            assert!(!analyse(p).unwrap().nullable, "{p}");
        }
    }

    #[test]
    fn probes_find_zero_width_patterns() {
        for p in [r"\b", "(?m)$", r"\B", "(?x) ^ "] {
            assert!(empty_on_probes(&Regex::new(p).unwrap()), "{p}");
        }
        assert!(!empty_on_probes(&Regex::new("(?x) a b").unwrap()));
    }

    #[test]
    fn the_prefilter_names_the_patterns_whose_factor_occurs() {
        let pats = ["acct-[0-9]{4}", ".*", "(?i)token", "foo|bar"];
        let f = Prefilter::new(&pats.map(|p| analyse(p).unwrap().factor));
        let mut out = vec![];
        for (s, want) in [
            ("nothing", [false, true, false, false]),
            ("x acct-1234 TOKEN", [true, true, true, false]),
            ("acct-123x bar", [false, true, false, true]),
        ] {
            f.candidates(s.as_bytes(), &mut out);
            assert_eq!(out, want, "{s}");
        }
    }

    #[test]
    fn many_factors_beyond_the_stack_state_and_few_first_bytes() {
        // 60 patterns of 10 positions: 600 bits, past the 256 kept on the
        // stack; key06's factor (bits 60-69) crosses a word boundary.
        let pats: Vec<String> = (0..60).map(|i| format!("key{i:02}=[0-9]{{4}}")).collect();
        let f = Prefilter::new(
            &pats
                .iter()
                .map(|p| analyse(p).unwrap().factor)
                .collect::<Vec<_>>(),
        );
        assert_eq!(f.first_few, b"k", "one first byte: memchr");
        let mut out = vec![];
        f.candidates(
            b"kk key07=1234 key06=9876 key59=0000 key60=1111 key3=4444",
            &mut out,
        );
        let hits: Vec<usize> = (0..60).filter(|&i| out[i]).collect();
        assert_eq!(hits, [6, 7, 59]);
        // Two first bytes (a letter in both cases), and more than three.
        let f = Prefilter::new(&["(?i)zeta", "[a-f]x"].map(|p| analyse(p).unwrap().factor));
        assert!(f.first_few.is_empty());
        f.candidates(b"..ZeTa..", &mut out);
        assert_eq!(out, [true, false]);
        let f = Prefilter::new(&["(?i)zeta"].map(|p| analyse(p).unwrap().factor));
        assert_eq!(f.first_few, b"Zz");
        f.candidates(b"..zEtA", &mut out);
        assert_eq!(out, [true]);
    }

    fn piece(of: &'static [&'static str], n: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(of), 0..n).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The analysis is sound: a string regex-lite matches holds the
        /// factor, and a pattern said not to be nullable never matches empty.
        #[test]
        fn every_match_has_the_factor_and_only_nullable_ones_are_empty(
            pattern in piece(&["a", "b", "A", "-", "é", r"\d", "[a-c]", "[^a]", ".", r"\w", r"\b", r"\B",
                               "^", "$", "(?i)", "(", ")", "|", "?", "*", "+", "{2}", "{1,3}",
                               "[[:alpha:]_]", r"\.", r"\x41", "(?:", "[-a]"], 12),
            hay in prop::collection::vec(piece(&["a", "b", "A", "B", "-", "1", "2", "é", " ", "_", ".",
                                                 "\n", "c", "ab", "aa"], 12), 8),
        ) {
            let Ok(re) = Regex::new(&pattern) else { return Ok(()) };
            // (Not analysed: a quantifier after a flag group; probed instead.)
            let Some(a) = analyse(&pattern) else { return Ok(()) };
            let f = Prefilter::new(std::slice::from_ref(&a.factor));
            let mut out = vec![];
            for h in &hay {
                for m in re.find_iter(h) {
                    prop_assert!(a.nullable || !m.is_empty(), "{} on {:?}", pattern, h);
                    f.candidates(m.as_str().as_bytes(), &mut out);
                    prop_assert!(out[0], "{} matched {:?} without its factor {:?}", pattern, m.as_str(), show(&a));
                }
            }
        }
    }
}
