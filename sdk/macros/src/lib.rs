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
    include_str!("../../../wit/types.wit"),
    include_str!("../../../wit/host.wit"),
    include_str!("../../../wit/driver.wit"),
    include_str!("../../../wit/processor.wit"),
    include_str!("../../../wit/worlds.wit"),
];

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
    out
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
        });
    }
}

/// Conversions between the SDK's types and the generated `types` interface.
fn conversions() -> TokenStream2 {
    quote! {
        use ferrule::plugin::types as wt;
        use ::ferrule_sdk as sdk;

        fn level_from_sdk(level: sdk::log::Level) -> ferrule::plugin::host::Level {
            use ferrule::plugin::host::Level as L;
            match level {
                sdk::log::Level::Trace => L::Trace,
                sdk::log::Level::Debug => L::Debug,
                sdk::log::Level::Info => L::Info,
                sdk::log::Level::Warn => L::Warn,
                sdk::log::Level::Error => L::Error,
            }
        }

        fn log_to_host(level: sdk::log::Level, message: &str) {
            ferrule::plugin::host::log(level_from_sdk(level), message);
        }

        fn value_to_wit(value: sdk::Value) -> wt::Value {
            match value {
                sdk::Value::Float(v) => wt::Value::Float(v),
                sdk::Value::Int(v) => wt::Value::Int(v),
                sdk::Value::Bool(v) => wt::Value::Boolean(v),
                sdk::Value::Text(v) => wt::Value::Text(v),
                sdk::Value::Bytes(v) => wt::Value::Bytes(v),
            }
        }

        #[allow(dead_code)]
        fn value_from_wit(value: wt::Value) -> sdk::Value {
            match value {
                wt::Value::Float(v) => sdk::Value::Float(v),
                wt::Value::Int(v) => sdk::Value::Int(v),
                wt::Value::Boolean(v) => sdk::Value::Bool(v),
                wt::Value::Text(v) => sdk::Value::Text(v),
                wt::Value::Bytes(v) => sdk::Value::Bytes(v),
            }
        }

        fn quality_to_wit(quality: sdk::Quality) -> wt::Quality {
            match quality {
                sdk::Quality::Good => wt::Quality::Good,
                sdk::Quality::Uncertain => wt::Quality::Uncertain,
                sdk::Quality::Bad => wt::Quality::Bad,
            }
        }

        fn reading_to_wit(r: sdk::Reading) -> wt::Reading {
            wt::Reading {
                channel: r.channel,
                value: value_to_wit(r.value),
                timestamp_ns: r.timestamp_ns,
                quality: quality_to_wit(r.quality),
                unit: r.unit,
            }
        }

        fn error_to_wit(e: sdk::Error) -> wt::Error {
            match e {
                sdk::Error::InvalidConfig(m) => wt::Error::InvalidConfig(m),
                sdk::Error::Unavailable(m) => wt::Error::Unavailable(m),
                sdk::Error::Timeout(m) => wt::Error::Timeout(m),
                sdk::Error::Protocol(m) => wt::Error::Protocol(m),
                sdk::Error::Unsupported(m) => wt::Error::Unsupported(m),
                sdk::Error::Other(m) => wt::Error::Other(m),
            }
        }

        fn readings_to_wit(readings: Vec<sdk::Reading>) -> Vec<wt::Reading> {
            readings.into_iter().map(reading_to_wit).collect()
        }
    }
}

fn driver_glue(self_ty: &TokenStream2) -> TokenStream2 {
    let bindings = bindings("driver-plugin");
    let conversions = conversions();
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_imports, non_snake_case)]
        mod __ferrule_driver_glue {
            #bindings
            #conversions

            use exports::ferrule::plugin::driver::Guest;
            type Plugin = super::#self_ty;

            ::std::thread_local! {
                static INSTANCE: sdk::__private::Slot<Plugin> = const { sdk::__private::Slot::new() };
            }

            struct Export;

            impl Guest for Export {
                fn init(config: String) -> Result<(), wt::Error> {
                    sdk::__private::install_logger(log_to_host);
                    let plugin = sdk::__private::new_driver::<Plugin>(&config).map_err(error_to_wit)?;
                    INSTANCE.with(|slot| slot.set(plugin));
                    Ok(())
                }

                fn poll() -> Result<Vec<wt::Reading>, wt::Error> {
                    INSTANCE
                        .with(|slot| slot.with(|p| <Plugin as sdk::Driver>::poll(p)))
                        .map(readings_to_wit)
                        .map_err(error_to_wit)
                }

                fn write(channel: String, value: wt::Value) -> Result<(), wt::Error> {
                    INSTANCE
                        .with(|slot| slot.with(|p| <Plugin as sdk::Driver>::write(p, &channel, value_from_wit(value))))
                        .map_err(error_to_wit)
                }

                fn status() -> wt::DeviceStatus {
                    let status = INSTANCE
                        .with(|slot| slot.with(|p| Ok(<Plugin as sdk::Driver>::status(p))))
                        .unwrap_or_else(|_| sdk::DeviceStatus::disconnected());
                    wt::DeviceStatus {
                        connected: status.connected,
                        firmware: status.firmware,
                        battery_percent: status.battery_percent,
                        signal_quality: status.signal_quality,
                        extra: status.extra,
                    }
                }
            }

            export!(Export with_types_in self);
        }
    }
}

fn processor_glue(self_ty: &TokenStream2) -> TokenStream2 {
    let bindings = bindings("processor-plugin");
    let conversions = conversions();
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_imports, non_snake_case)]
        mod __ferrule_processor_glue {
            #bindings
            #conversions

            use exports::ferrule::plugin::processor::Guest;
            type Plugin = super::#self_ty;

            ::std::thread_local! {
                static INSTANCE: sdk::__private::Slot<Plugin> = const { sdk::__private::Slot::new() };
            }

            fn reading_from_wit(r: wt::Reading) -> sdk::Reading {
                sdk::Reading {
                    channel: r.channel,
                    value: value_from_wit(r.value),
                    timestamp_ns: r.timestamp_ns,
                    quality: match r.quality {
                        wt::Quality::Good => sdk::Quality::Good,
                        wt::Quality::Uncertain => sdk::Quality::Uncertain,
                        wt::Quality::Bad => sdk::Quality::Bad,
                    },
                    unit: r.unit,
                }
            }

            struct Export;

            impl Guest for Export {
                fn init(config: String) -> Result<(), wt::Error> {
                    sdk::__private::install_logger(log_to_host);
                    let plugin = sdk::__private::new_processor::<Plugin>(&config).map_err(error_to_wit)?;
                    INSTANCE.with(|slot| slot.set(plugin));
                    Ok(())
                }

                fn process(batch: Vec<wt::Reading>) -> Result<Vec<wt::Reading>, wt::Error> {
                    let batch: Vec<sdk::Reading> = batch.into_iter().map(reading_from_wit).collect();
                    INSTANCE
                        .with(|slot| slot.with(|p| <Plugin as sdk::Processor>::process(p, batch)))
                        .map(readings_to_wit)
                        .map_err(error_to_wit)
                }
            }

            export!(Export with_types_in self);
        }
    }
}
