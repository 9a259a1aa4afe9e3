#!/usr/bin/env bash
# Checks the package as an integrator gets it: `npm pack` (whose `prepare`
# builds dist/ from scratch), the tarball installed into a throwaway project
# in a temporary directory, and then, under Node:
#   - `import` and `require` both load it, and its types resolve for both;
#   - importing it, building a client and a room view touch neither
#     `WebSocket`, `window`, `document` nor `fetch` (server-side rendering);
#   - `connect()` without any WebSocket fails with a clear error.
# Needs `npm ci` first (TypeScript builds the package). No network: the
# package has no runtime dependencies. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/mixroom-pack-check.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

fail() {
  echo "pack-check: $*" >&2
  exit 1
}

echo "pack-check: packing (prepare builds dist/ anew)"
rm -rf "$here/dist"
(cd "$here" && npm pack --pack-destination "$scratch" >"$scratch/pack.log" 2>&1) ||
  { cat "$scratch/pack.log" >&2; fail "npm pack failed"; }
tarballs=("$scratch"/*.tgz)
[ -f "${tarballs[0]}" ] || fail "npm pack made no tarball"
tarball="${tarballs[0]}"

listing="$(tar -tzf "$tarball")"
for wanted in package/package.json package/LICENSE package/README.md \
  package/dist/esm/index.js package/dist/esm/index.d.ts package/dist/esm/room.js \
  package/dist/cjs/index.js package/dist/cjs/index.d.ts package/dist/cjs/package.json; do
  grep -qx "$wanted" <<<"$listing" || fail "the tarball lacks $wanted"
done
if grep -Eq '^package/(test|e2e|demo-src|node_modules)/' <<<"$listing"; then
  fail "the tarball holds files integrators do not need"
fi
echo "pack-check: $(basename "$tarball") holds $(wc -l <<<"$listing") files"

app="$scratch/app"
mkdir "$app"
printf '{ "name": "pack-check-app", "version": "0.0.0", "private": true }\n' >"$app/package.json"
(cd "$app" && npm install --no-audit --no-fund "$tarball" >"$scratch/install.log" 2>&1) ||
  { cat "$scratch/install.log" >&2; fail "npm install of the tarball failed"; }

# Globals a browser has: reading any of them during import or construction
# throws, as it would in a server-rendering runtime that lacks them.
cat >"$app/traps.cjs" <<'JS'
for (const name of ["WebSocket", "window", "document", "fetch"]) {
  Object.defineProperty(globalThis, name, {
    configurable: true,
    get() {
      throw new Error(`${name} was touched before connect()`);
    },
  });
}
exports.untrap = () => {
  for (const name of ["WebSocket", "window", "document", "fetch"]) delete globalThis[name];
};
JS

cat >"$app/check.mjs" <<'JS'
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { untrap } = require("./traps.cjs");
const esm = await import("@mixroom/realtime-client");
const client = new esm.MixroomClient({ url: "ws://localhost:1/v1/ws", getToken: () => "token" });
const room = client.room("booking:b1");
const snapshot = room.getSnapshot();
if (snapshot.status !== "joining" || snapshot.messages.length !== 0) throw new Error("unexpected snapshot");
room.close();
untrap();
let refused = false;
try {
  client.connect();
} catch (error) {
  refused = /no WebSocket implementation/.test(String(error));
}
if (!refused) throw new Error("connect() without a WebSocket did not fail clearly");
const cjs = require("@mixroom/realtime-client");
for (const name of ["MixroomClient", "RoomView", "MixroomError", "backoffDelay", "bookingRoom", "subscribeToPush", "unsubscribeFromPush"]) {
  if (typeof esm[name] !== "function") throw new Error(`import: ${name} is missing`);
  if (typeof cjs[name] !== "function") throw new Error(`require: ${name} is missing`);
}
console.log("pack-check: import works, and touches no browser global before connect()");
JS

cat >"$app/check.cjs" <<'JS'
const { untrap } = require("./traps.cjs");
const { MixroomClient, MixroomError, CloseCode } = require("@mixroom/realtime-client");
const client = new MixroomClient({ url: "ws://localhost:1/v1/ws", getToken: () => "token" });
client.room("booking:b1").close();
untrap();
if (!(new MixroomError("closed", "x") instanceof Error)) throw new Error("MixroomError is not an Error");
if (CloseCode.AuthFailed !== 4001) throw new Error("CloseCode is wrong");
console.log("pack-check: require works, and touches no browser global before connect()");
JS

(cd "$app" && node check.mjs) || fail "the ES module check failed"
(cd "$app" && node check.cjs) || fail "the CommonJS check failed"

# The types, as TypeScript resolves them for an ES module and for CommonJS.
tsc="$here/node_modules/typescript/bin/tsc"
if [ -f "$tsc" ]; then
  cat >"$app/types.mts" <<'TS'
import { MixroomClient, type RoomSnapshot } from "@mixroom/realtime-client";
const client = new MixroomClient({ url: "ws://x/v1/ws", getToken: () => null });
const snapshot: RoomSnapshot = client.room("booking:b1").getSnapshot();
export const unread: number = snapshot.unread;
TS
  cat >"$app/types.cts" <<'TS'
import realtime = require("@mixroom/realtime-client");
const client = new realtime.MixroomClient({ url: "ws://x/v1/ws", getToken: async () => "t" });
export const state: realtime.ConnectionState = client.state;
TS
  cat >"$app/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "target": "ES2022",
    "lib": ["ES2022", "DOM"],
    "strict": true,
    "noEmit": true,
    "types": []
  },
  "files": ["types.mts", "types.cts"]
}
JSON
  (cd "$app" && node "$tsc" -p tsconfig.json) || fail "the types do not resolve for import and require"
  echo "pack-check: types resolve for import and require"
else
  echo "pack-check: no TypeScript in node_modules; skipped the type check (run npm ci)" >&2
fi
echo "pack-check: ok"
