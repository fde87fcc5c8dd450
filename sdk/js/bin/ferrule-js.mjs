#!/usr/bin/env node
// `ferrule-js build MODULE.js [-o OUT.wasm]`: a JavaScript driver or
// processor as a WebAssembly component for the ferrule:plugin@0.2.0 world.
//
// The module's default export is the plugin class. esbuild bundles it with
// its imports (npm packages included; `ferrule-sdk` always resolves to this
// SDK), then componentize-js builds the component with only the WASI
// features a plugin may use (stdio, clocks, random): no `wasi:http`, no
// fetch event, so the component imports exactly what ferrule provides.
// Ahead-of-time compilation (weval) is not used: ferrule compiles the
// component itself and keeps it in its compile cache.

import { mkdtemp, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const SDK = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const WIT_VERSION = '0.2.0';
const USAGE = 'usage: ferrule-js build MODULE.js [-o OUT.wasm]';

class BuildError extends Error {}

async function bundle(esbuild, entry, outfile, cwd) {
  try {
    await esbuild.build({
      entryPoints: [entry],
      outfile,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      external: ['ferrule:*', 'wasi:*'],
      alias: { 'ferrule-sdk': join(SDK, 'src', 'index.js') },
      absWorkingDir: cwd,
      logLevel: 'silent',
    });
  } catch (e) {
    const lines = (e.errors ?? []).map((m) => `${m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ` : ''}${m.text}`);
    throw new BuildError(lines.join('\n') || String(e));
  }
}

/** Whether the module's default export is a driver or a processor. */
async function pluginKind(esbuild, module, tmp) {
  const probe = join(tmp, 'probe.mjs');
  await bundle(esbuild, module, probe, dirname(module));
  let exported;
  try {
    exported = (await import(pathToFileURL(probe).href)).default;
  } catch (e) {
    throw new BuildError(`${module}: loading it failed: ${e.message}`);
  }
  if (typeof exported !== 'function' || !exported.prototype) {
    throw new BuildError(`${module}: the default export must be the plugin class (extends Driver or Processor)`);
  }
  if (typeof exported.prototype.poll === 'function') return ['driver', exported.name];
  if (typeof exported.prototype.process === 'function') return ['processor', exported.name];
  throw new BuildError(`${module}: ${exported.name || 'the default export'} extends neither Driver nor Processor`);
}

async function build(modulePath, output) {
  const module = resolve(modulePath);
  try {
    if (!(await stat(module)).isFile()) throw new Error();
  } catch {
    throw new BuildError(`${modulePath}: no such file`);
  }
  const esbuild = await import('esbuild');
  const { componentize } = await import('@bytecodealliance/componentize-js');
  const tmp = await mkdtemp(join(tmpdir(), 'ferrule-js-'));
  const started = Date.now();
  try {
    const [kind, name] = await pluginKind(esbuild, module, tmp);
    const entry = join(tmp, 'entry.js');
    await writeFile(
      entry,
      `import { ${kind}Export } from ${JSON.stringify(join(SDK, 'src', 'glue.js'))};\n` +
        `import Plugin from ${JSON.stringify(module)};\n` +
        `export const ${kind} = ${kind}Export(Plugin);\n`,
    );
    const bundled = join(tmp, 'component.js');
    await bundle(esbuild, entry, bundled, dirname(module));
    let component;
    try {
      ({ component } = await componentize({
        sourcePath: bundled,
        witPath: join(SDK, 'wit'),
        worldName: `${kind}-plugin`,
        disableFeatures: ['http', 'fetch-event'],
      }));
    } catch (e) {
      throw new BuildError(`componentize-js failed: ${e.message}`);
    }
    await mkdir(dirname(resolve(output)), { recursive: true });
    await writeFile(output, component);
    const mb = (component.length / 1e6).toFixed(1);
    const s = ((Date.now() - started) / 1000).toFixed(1);
    console.log(`built ${output} (${kind} ${name}, ferrule:plugin@${WIT_VERSION}, ${mb} MB, ${s} s)`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function main(argv) {
  const [command, ...rest] = argv;
  if (command !== 'build' || rest.length === 0) {
    console.error(USAGE);
    return 2;
  }
  let module;
  let output;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '-o' || rest[i] === '--output') output = rest[++i];
    else if (module === undefined) module = rest[i];
    else {
      console.error(USAGE);
      return 2;
    }
  }
  output ??= module.replace(/\.(m?js)$/, '') + '.wasm';
  try {
    await build(module, output);
    return 0;
  } catch (e) {
    if (e instanceof BuildError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

process.exitCode = await main(process.argv.slice(2));
