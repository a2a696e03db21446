//! The Lua scripts: `lua/prelude.lua` + one algorithm's file + `lua/single.lua` for a call on
//! one key, and the prelude + every algorithm + `lua/multi.lua` for several keys at once.
//! Each file documents its `KEYS[i]`/`ARGV[i]` and state layout.

use std::sync::OnceLock;
use tollgate::Algorithm;

macro_rules! single {
    ($file:literal, $name:literal) => {
        concat!(
            include_str!("../lua/prelude.lua"),
            include_str!(concat!("../lua/", $file)),
            "\nlocal THIS = ALG.",
            $name,
            "\n",
            include_str!("../lua/single.lua")
        )
    };
}

/// The single-key script of `algorithm`.
pub(crate) fn single_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => single!("token_bucket.lua", "token_bucket"),
        Algorithm::SlidingLog => single!("sliding_log.lua", "sliding_log"),
        Algorithm::SlidingWindow => single!("sliding_window.lua", "sliding_window"),
        Algorithm::FixedWindow => single!("fixed_window.lua", "fixed_window"),
        // GCRA, and any algorithm added to the core later (rejected at bind time).
        _ => single!("gcra.lua", "gcra"),
    }
}

/// The multi-key script.
pub(crate) const MULTI_SOURCE: &str = concat!(
    include_str!("../lua/prelude.lua"),
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/token_bucket.lua"),
    include_str!("../lua/sliding_log.lua"),
    include_str!("../lua/sliding_window.lua"),
    include_str!("../lua/fixed_window.lua"),
    include_str!("../lua/multi.lua"),
);

/// The compiled script objects (SHA1 computed once per process).
pub(crate) fn single_script(algorithm: Algorithm) -> &'static redis::Script {
    static SCRIPTS: [OnceLock<redis::Script>; 5] = [const { OnceLock::new() }; 5];
    let index = match algorithm {
        Algorithm::TokenBucket => 1,
        Algorithm::SlidingLog => 2,
        Algorithm::SlidingWindow => 3,
        Algorithm::FixedWindow => 4,
        _ => 0,
    };
    SCRIPTS[index].get_or_init(|| redis::Script::new(single_source(algorithm)))
}

/// The multi-key script object.
pub(crate) fn multi_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(MULTI_SOURCE))
}
