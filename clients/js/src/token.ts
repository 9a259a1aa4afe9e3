import { base64UrlToBytes } from "./base64url.js";

/**
 * Reads a JWT's `exp` without verifying it: the client only needs to know
 * when to ask for a fresh token. The server verifies every token.
 */
export function tokenExpiresAt(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const json = new TextDecoder().decode(base64UrlToBytes(payload));
    const claims: unknown = JSON.parse(json);
    if (typeof claims === "object" && claims !== null && "exp" in claims) {
      const exp = (claims as { exp: unknown }).exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp * 1000;
    }
  } catch {
    // Not a JWT we can read: no scheduled refresh; the server's 4001 close
    // and a reconnect with a fresh token still keep the client working.
  }
  return undefined;
}
