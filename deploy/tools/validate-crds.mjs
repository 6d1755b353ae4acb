// Validates prometheus-operator custom resources (ServiceMonitor, PrometheusRule)
// offline, as kubernetes-validate does for built-in kinds:
//   1. the JSON-schema validators of the npm package @kubernetes-models/prometheus-operator
//      (generated from prometheus-operator's API types: types, enums, patterns, required);
//   2. a strict pass those validators lack: every field name must exist in the
//      package's type declarations (.d.ts), so a typo such as `scrapeInterval` fails
//      instead of being pruned silently by the API server.
//
// usage: node validate-crds.mjs <npm prefix holding node_modules> <objects.json>
import { readFileSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, objectsFile] = process.argv.slice(2);
const modules = join(prefix, "node_modules");
const pkg = join(modules, "@kubernetes-models/prometheus-operator");
const KINDS = {
  "monitoring.coreos.com/v1/ServiceMonitor": "monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule": "monitoring.coreos.com/v1/PrometheusRule",
};

// ---- strict field check from the .d.ts declarations
const classCache = new Map();

function resolveModule(fromFile, spec) {
  let base;
  if (spec.startsWith(".")) base = join(dirname(fromFile), spec.replace(/\.js$/, ""));
  else base = join(modules, spec.replace(/\.js$/, ""));
  const file = base + ".d.ts";
  return existsSync(file) ? file : null;
}

// Properties of the `export declare class` in a .d.ts (inherited ones are listed there too):
// name -> {file, type} where type is the raw TypeScript type text of the property.
function classProps(file) {
  if (classCache.has(file)) return classCache.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    for (const name of m[1].split(",").map((s) => s.trim())) imports.set(name, m[2]);
  }
  const start = text.search(/^export declare class \w+/m);
  let props = null;
  if (start >= 0) {
    props = new Map();
    const lines = text.slice(start).split("\n").slice(1);
    for (const line of lines) {
      if (line.startsWith("}")) break;
      const m = line.match(/^    "([^"]+)"\??: (.*?);?$/);
      if (m) props.set(m[1], { file, type: m[2], imports });
    }
  }
  classCache.set(file, props);
  return props;
}

function typeFile(prop) {
  if (prop.type.trim().endsWith("{")) return null; // inline map such as labels: free keys
  const m = prop.type.match(/(?:Array<)?(I\w+)>?$/);
  if (!m || !prop.imports.has(m[1])) return null; // string, number, literal, union: a leaf
  return resolveModule(prop.file, prop.imports.get(m[1]));
}

function strict(value, file, path, errors) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => strict(v, file, `${path}[${i}]`, errors));
    return;
  }
  const props = file && classProps(file);
  if (!props) return; // not a declared object type (alias, IntOrString, ...): nothing to check
  for (const [key, v] of Object.entries(value)) {
    const prop = props.get(key);
    if (!prop) {
      errors.push(`${path}.${key}: unknown field (not in ${file.split("node_modules/")[1]})`);
      continue;
    }
    strict(v, typeFile(prop), `${path}.${key}`, errors);
  }
}

// ---- main
const objects = JSON.parse(readFileSync(objectsFile, "utf8"));
let failed = 0;
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const rel = KINDS[key];
  if (!rel) {
    console.log(`  FAIL: ${name}: no schema for ${key}`);
    failed++;
    continue;
  }
  const errors = [];
  const mod = await import(pathToFileURL(join(pkg, rel + ".js")).href);
  const Model = mod[obj.kind];
  try {
    new Model(obj).validate();
  } catch (e) {
    errors.push(String(e.message || e));
  }
  strict(obj, join(pkg, rel + ".d.ts"), obj.kind, errors);
  if (errors.length) {
    failed++;
    for (const e of errors) console.log(`  FAIL: ${name}: ${e}`);
  } else {
    console.log(`  ok: ${name} valid against the prometheus-operator ${obj.apiVersion} schema (strict field names)`);
  }
}
if (objects.length === 0) {
  console.log("  FAIL: no prometheus-operator objects to validate");
  failed++;
}
process.exit(failed ? 1 : 0);
