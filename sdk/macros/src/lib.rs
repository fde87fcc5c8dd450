//! `#[ferrule_sdk::driver]` and `#[ferrule_sdk::processor]`.
//!
//! Each attribute keeps the item as written and adds, beside it, the
//! component glue for one `ferrule:plugin` world: wit-bindgen's bindings
//! (generated from the WIT text embedded here, so a plugin crate needs no
//! WIT files of its own), an export type that forwards to the author's
//! `Driver`/`Processor` impl, and conversions between the SDK's types and
//! the generated ones.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{Item, parse_macro_input};

const WIT_FILES: [&str; 5] = [
    include_str!("../wit/0.2.0/types.wit"),
    include_str!("../wit/0.2.0/host.wit"),
    include_str!("../wit/0.2.0/driver.wit"),
    include_str!("../wit/0.2.0/processor.wit"),
    include_str!("../wit/0.2.0/worlds.wit"),
];

/// The world the SDK itself generates its data types from: the plugin
/// worlds' `types` interface, once, so every plugin's glue reuses them.
const SDK_TYPES_WORLD: &str = "
world sdk-types {
    import types;
}
";

/// Joins the WIT files into one document with a single package line, as
/// wit-bindgen's `inline` option wants.
fn wit_document() -> String {
    let mut out = String::new();
    for (index, file) in WIT_FILES.iter().enumerate() {
        for line in file.lines() {
            if index > 0 && line.trim_start().starts_with("package ") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(SDK_TYPES_WORLD);
    out
}

/// The SDK's data types (`Value`, `Quality`, `Error`, ...), generated from
/// the WIT once inside `ferrule_sdk`; not for plugin crates.
#[doc(hidden)]
#[proc_macro]
pub fn __sdk_types(_: TokenStream) -> TokenStream {
    let wit = wit_document();
    quote! {
        ::wit_bindgen::generate!({
            inline: #wit,
            world: "sdk-types",
            additional_derives: [PartialEq],
        });
    }
    .into()
}

/// Marks the type that implements `ferrule_sdk::Driver` and exports it as
/// the component's `driver-plugin` world. Put it on the struct or on the
/// `impl Driver for ...` block.
#[proc_macro_attribute]
pub fn driver(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Driver)
}

/// Marks the type that implements `ferrule_sdk::Processor` and exports it as
/// the component's `processor-plugin` world.
#[proc_macro_attribute]
pub fn processor(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Processor)
}

#[derive(Clone, Copy)]
enum Kind {
    Driver,
    Processor,
}

fn expand(attr: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "this attribute takes no arguments")
            .to_compile_error()
            .into();
    }
    let input = parse_macro_input!(item as Item);
    let self_ty: TokenStream2 = match &input {
        Item::Struct(s) => {
            let ident = &s.ident;
            quote!(#ident)
        }
        Item::Enum(e) => {
            let ident = &e.ident;
            quote!(#ident)
        }
        Item::Impl(i) => {
            let ty = &i.self_ty;
            quote!(#ty)
        }
        _ => {
            return syn::Error::new(
                Span::call_site(),
                "put this attribute on the plugin's struct, enum or trait impl",
            )
            .to_compile_error()
            .into();
        }
    };
    let glue = match kind {
        Kind::Driver => driver_glue(&self_ty),
        Kind::Processor => processor_glue(&self_ty),
    };
    quote!(#input #glue).into()
}

fn bindings(world: &str) -> TokenStream2 {
    let wit = wit_document();
    quote! {
        ::ferrule_sdk::__private::wit_bindgen::generate!({
            inline: #wit,
            world: #world,
            runtime_path: "::ferrule_sdk::__private::wit_bindgen::rt",
            with: {
                "ferrule:plugin/types@0.2.0": ::ferrule_sdk::__private::types,
            },
        });
    }
}

/// The host's log function, for the SDK's logger.
fn host_log() -> TokenStream2 {
    quote! {
        use ::ferrule_sdk as sdk;

        fn log_to_host(level: sdk::log::Level, message: &str) {
            use ferrule::plugin::host::Level as L;
            let level = match level {
                sdk::log::Level::Trace => L::Trace,
                sdk::log::Level::Debug => L::Debug,
                sdk::log::Level::Info => L::Info,
                sdk::log::Level::Warn => L::Warn,
                sdk::log::Level::Error => L::Error,
            };
            ferrule::plugin::host::log(level, message);
        }
    }
}

fn driver_glue(self_ty: &TokenStream2) -> TokenStream2 {
    let bindings = bindings("driver-plugin");
    let host_log = host_log();
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_imports, non_snake_case)]
        mod __ferrule_driver_glue {
            #bindings
            #host_log

            use exports::ferrule::plugin::driver::Guest;
            use sdk::__private::types as wt;
            type Plugin = super::#self_ty;

            ::std::thread_local! {
                static INSTANCE: sdk::__private::Slot<sdk::__private::DriverState<Plugin>> =
                    const { sdk::__private::Slot::new() };
            }

            struct Export;

            impl Guest for Export {
                fn init(config: String) -> Result<Vec<wt::Channel>, wt::Error> {
                    sdk::__private::install_logger(log_to_host);
                    let (state, channels) = sdk::__private::DriverState::<Plugin>::init(&config)?;
                    INSTANCE.with(|slot| slot.set(state));
                    Ok(channels)
                }

                fn poll() -> Result<wt::Batch, wt::Error> {
                    INSTANCE.with(|slot| slot.with(|s| s.poll()))
                }

                fn write(channel: u32, value: wt::Value) -> Result<(), wt::Error> {
                    INSTANCE.with(|slot| slot.with(|s| s.write(channel, value)))
                }

                fn status() -> wt::DeviceStatus {
                    INSTANCE
                        .with(|slot| slot.with(|s| Ok(s.status())))
                        .unwrap_or_else(|_| sdk::DeviceStatus::disconnected())
                }
            }

            export!(Export with_types_in self);
        }
    }
}

fn processor_glue(self_ty: &TokenStream2) -> TokenStream2 {
    let bindings = bindings("processor-plugin");
    let host_log = host_log();
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_imports, non_snake_case)]
        mod __ferrule_processor_glue {
            #bindings
            #host_log

            use exports::ferrule::plugin::processor::Guest;
            use sdk::__private::types as wt;
            type Plugin = super::#self_ty;

            ::std::thread_local! {
                static INSTANCE: sdk::__private::Slot<sdk::__private::ProcessorState<Plugin>> =
                    const { sdk::__private::Slot::new() };
            }

            struct Export;

            impl Guest for Export {
                fn init(config: String, channels: Vec<wt::Channel>) -> Result<Vec<wt::Channel>, wt::Error> {
                    sdk::__private::install_logger(log_to_host);
                    let (state, derived) = sdk::__private::ProcessorState::<Plugin>::init(&config, channels)?;
                    INSTANCE.with(|slot| slot.set(state));
                    Ok(derived)
                }

                fn process(batch: wt::Batch) -> Result<wt::Batch, wt::Error> {
                    INSTANCE.with(|slot| slot.with(|s| s.process(batch)))
                }
            }

            export!(Export with_types_in self);
        }
    }
}
