//! Host bindings for every `ferrule:plugin` version this runtime loads.
//! Nothing outside `crate::plugin` sees these types; `convert` turns them
//! into the runtime's own.

/// The driver and processor worlds of the WIT package in `$path`, sharing
/// one `types` and one `host` module.
macro_rules! worlds {
    ($path:literal) => {
        pub mod driver {
            wasmtime::component::bindgen!({
                world: "driver-plugin",
                path: $path,
                exports: { default: async },
            });
        }

        pub mod processor {
            wasmtime::component::bindgen!({
                world: "processor-plugin",
                path: $path,
                exports: { default: async },
                with: {
                    "ferrule:plugin/types": super::driver::ferrule::plugin::types,
                    "ferrule:plugin/host": super::driver::ferrule::plugin::host,
                },
            });
        }

        pub use driver::ferrule::plugin::host;
        pub use driver::ferrule::plugin::types;
    };
}

/// `ferrule:plugin@0.1.0`: readings carry their channel name and unit.
pub mod v0_1 {
    worlds!("../wit/0.1.0");
}

/// `ferrule:plugin@0.2.0`: channels declared once, readings by index.
pub mod v0_2 {
    worlds!("../wit/0.2.0");
}
