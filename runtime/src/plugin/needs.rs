//! What one instance of a component takes from the pooling allocator: its
//! core module instances, linear memories and tables, read from the
//! component's bytes. A Rust plugin holds about 4 core instances; a
//! Python or JavaScript one, with its interpreter and WASI adapters, many
//! more, so the pool is sized from the plugins a config names rather than
//! from a fixed allowance per instance.

use wasmparser::{Instance, Parser, Payload};

/// One instance's share of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentNeeds {
    /// Core module instances it creates.
    pub core_instances: u32,
    /// Linear memories those instances define (imported ones are shared).
    pub memories: u32,
    /// Tables those instances define.
    pub tables: u32,
}

impl ComponentNeeds {
    /// What is assumed of a component whose needs were not measured (a
    /// file that cannot be read yet, or a caller that measures nothing): a
    /// Rust wasip2 component's handful of core instances, one or two
    /// memories and a few tables.
    pub const UNMEASURED: ComponentNeeds = ComponentNeeds {
        core_instances: 8,
        memories: 2,
        tables: 8,
    };

    /// What a component's bytes say: every core instantiation, and the
    /// memories and tables each instantiated module defines. A module
    /// instantiated twice counts twice.
    pub fn of(bytes: &[u8]) -> Result<ComponentNeeds, String> {
        // Modules in the order they appear at any nesting depth, each with
        // (memories, tables) it defines; instantiations refer to modules by
        // index within their own component, counted per component.
        let mut modules: Vec<(u32, u32)> = Vec::new();
        let mut needs = ComponentNeeds::default();
        // Per component: the global indices of its modules, in order.
        let mut stack: Vec<Vec<usize>> = Vec::new();
        // Per open core module: its (memories, tables) so far.
        let mut current: Option<(u32, u32)> = None;
        let mut pending: Vec<Vec<u32>> = Vec::new();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| format!("not a readable component: {e}"))? {
                Payload::Version { encoding, .. } => match encoding {
                    wasmparser::Encoding::Component => {
                        stack.push(Vec::new());
                        pending.push(Vec::new());
                    }
                    wasmparser::Encoding::Module => current = Some((0, 0)),
                },
                Payload::MemorySection(r) => {
                    if let Some(m) = current.as_mut() {
                        m.0 += r.count();
                    }
                }
                Payload::TableSection(r) => {
                    if let Some(m) = current.as_mut() {
                        m.1 += r.count();
                    }
                }
                Payload::InstanceSection(r) => {
                    let list = pending
                        .last_mut()
                        .ok_or("core instances outside a component")?;
                    for instance in r {
                        match instance.map_err(|e| format!("bad instance section: {e}"))? {
                            Instance::Instantiate { module_index, .. } => list.push(module_index),
                            Instance::FromExports(_) => {}
                        }
                    }
                }
                Payload::End(_) => {
                    if let Some(module) = current.take() {
                        modules.push(module);
                        if let Some(component) = stack.last_mut() {
                            component.push(modules.len() - 1);
                        }
                    } else if let (Some(component), Some(instantiated)) =
                        (stack.pop(), pending.pop())
                    {
                        for index in instantiated {
                            let Some(&(memories, tables)) = component
                                .get(index as usize)
                                .and_then(|&global| modules.get(global))
                            else {
                                // Modules imported or aliased from outside
                                // this component: counted as one instance.
                                needs.core_instances += 1;
                                continue;
                            };
                            needs.core_instances += 1;
                            needs.memories += memories;
                            needs.tables += tables;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(needs)
    }

    /// The larger of each figure.
    pub fn max(self, other: ComponentNeeds) -> ComponentNeeds {
        ComponentNeeds {
            core_instances: self.core_instances.max(other.core_instances),
            memories: self.memories.max(other.memories),
            tables: self.tables.max(other.tables),
        }
    }

    /// Each figure added, saturating.
    pub fn plus(self, other: ComponentNeeds) -> ComponentNeeds {
        ComponentNeeds {
            core_instances: self.core_instances.saturating_add(other.core_instances),
            memories: self.memories.saturating_add(other.memories),
            tables: self.tables.saturating_add(other.tables),
        }
    }

    /// Each figure multiplied by `n`, saturating.
    pub fn times(self, n: u32) -> ComponentNeeds {
        ComponentNeeds {
            core_instances: self.core_instances.saturating_mul(n),
            memories: self.memories.saturating_mul(n),
            tables: self.tables.saturating_mul(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_a_component_instantiates() {
        // Two modules: one with a memory and a table, one with neither;
        // the first instantiated twice, the second once.
        let component = wat_component();
        let needs = ComponentNeeds::of(&component).unwrap();
        assert_eq!(
            needs,
            ComponentNeeds {
                core_instances: 3,
                memories: 2,
                tables: 2
            }
        );
        assert!(ComponentNeeds::of(b"\0asm garbage").is_err());
    }

    /// A component with modules A (1 memory, 1 table) and B (nothing),
    /// instantiating A, B, A.
    fn wat_component() -> Vec<u8> {
        use wasm_encoder::{
            Component, InstanceSection, MemorySection, MemoryType, Module, ModuleSection, RefType,
            TableSection, TableType,
        };
        let mut a = Module::new();
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 1,
            maximum: None,
            shared: false,
        });
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        a.section(&tables).section(&memories);
        let b = Module::new();
        let mut component = Component::new();
        component.section(&ModuleSection(&a));
        component.section(&ModuleSection(&b));
        let mut instances = InstanceSection::new();
        let none: [(&str, wasm_encoder::ModuleArg); 0] = [];
        instances.instantiate(0, none);
        instances.instantiate(1, none);
        instances.instantiate(0, none);
        component.section(&instances);
        component.finish()
    }
}
