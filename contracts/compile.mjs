// Compiles the contracts with the solc pinned in package.json and writes build/<Name>.json
// ({abi, bytecode, compiler, settings}) with sorted keys, so the same sources always give the same bytes.
//
//   node compile.mjs           write build/
//   node compile.mjs --check   recompile and exit 1 if the committed build/ differs (CI)
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const HERE = dirname(fileURLToPath(import.meta.url));
const BUILD = join(HERE, "build");
const CONTRACTS = ["McpzSettlement", "TestToken", "TestFiatToken"];

// The settings are part of each artifact, so a reader knows how to reproduce the bytes.
// cancun: the newest EVM version zkSync's EVM emulator runs.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function findImport(path) {
  const file = join(HERE, "node_modules", path);
  if (!existsSync(file)) return { error: `not found: ${path} (run npm ci in contracts/)` };
  return { contents: readFileSync(file, "utf8") };
}

// JSON with object keys sorted at every depth; arrays keep their order (solc's ABI order is stable).
function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, canonical(value[k])]),
    );
  }
  return value;
}

function compile() {
  const sources = Object.fromEntries(
    CONTRACTS.map((name) => [`${name}.sol`, { content: readFileSync(join(HERE, `${name}.sol`), "utf8") }]),
  );
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  // Warnings inside OpenZeppelin (e.g. its transient-storage notice) are theirs to answer, not ours.
  const ours = (e) => e.severity === "error" || !e.sourceLocation?.file?.startsWith("@openzeppelin/");
  for (const e of (output.errors ?? []).filter(ours)) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(1);
  const artifacts = {};
  for (const name of CONTRACTS) {
    const c = output.contracts[`${name}.sol`][name];
    const artifact = {
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      compiler: `solc-js ${solc.version()}`,
      settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
    };
    artifacts[name] = JSON.stringify(canonical(artifact), null, 1) + "\n";
  }
  return artifacts;
}

const check = process.argv.includes("--check");
const artifacts = compile();
let stale = [];
for (const [name, text] of Object.entries(artifacts)) {
  const path = join(BUILD, `${name}.json`);
  if (check) {
    const committed = existsSync(path) ? readFileSync(path, "utf8") : "";
    if (committed !== text) stale.push(path);
  } else {
    mkdirSync(BUILD, { recursive: true });
    writeFileSync(path, text);
  }
}
if (stale.length) {
  process.stderr.write(
    `error: ${stale.join(", ")} differ from a fresh compile; run \`node contracts/compile.mjs\` and commit build/\n`,
  );
  process.exit(1);
}
if (!check) process.stdout.write(`wrote ${Object.keys(artifacts).length} artifacts to ${BUILD}\n`);
