// `npm run build`: compiles src/ twice with tsc — ES modules into dist/esm
// and CommonJS into dist/cjs, both with declarations. The package is
// "type": "module", so dist/cjs gets a one-line package.json marking its
// files as CommonJS for Node and TypeScript.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL("..", import.meta.url));
const tscBin = createRequire(import.meta.url).resolve("typescript/bin/tsc");

rmSync(`${here}/dist`, { recursive: true, force: true });
for (const config of ["tsconfig.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tscBin, "--project", config], { cwd: here, stdio: "inherit" });
  } catch {
    process.exit(1);
  }
}
mkdirSync(`${here}/dist/cjs`, { recursive: true });
writeFileSync(`${here}/dist/cjs/package.json`, '{ "type": "commonjs" }\n');
console.log("dist/esm and dist/cjs built");
