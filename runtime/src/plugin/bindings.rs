//! Host bindings for the `ferrule:plugin` worlds. Nothing outside
//! `crate::plugin` sees these types.

pub mod driver {
    wasmtime::component::bindgen!({
        world: "driver-plugin",
        path: "../wit",
        exports: { default: async },
    });
}

pub mod processor {
    wasmtime::component::bindgen!({
        world: "processor-plugin",
        path: "../wit",
        exports: { default: async },
        with: {
            "ferrule:plugin/types": super::driver::ferrule::plugin::types,
            "ferrule:plugin/host": super::driver::ferrule::plugin::host,
        },
    });
}

pub use driver::ferrule::plugin::host;
pub use driver::ferrule::plugin::types;
