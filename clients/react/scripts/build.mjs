// Builds the package: dist/esm (ES modules) and dist/cjs (CommonJS), each
// with its .d.ts files. dist/cjs gets a package.json of its own saying
// "commonjs", so Node and TypeScript read its .js and .d.ts files as
// CommonJS although the package itself is "type": "module".
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");

rmSync(resolve(root, "dist"), { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  const run = spawnSync(process.execPath, [tsc, "-p", project], { cwd: root, stdio: "inherit" });
  if (run.status !== 0) process.exit(run.status ?? 1);
}
mkdirSync(resolve(root, "dist/cjs"), { recursive: true });
writeFileSync(resolve(root, "dist/cjs/package.json"), `${JSON.stringify({ type: "commonjs" }, null, 2)}\n`);
console.log("built dist/esm and dist/cjs");
