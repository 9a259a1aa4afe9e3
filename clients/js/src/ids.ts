/** A fresh `client_id` (a UUID); `crypto.randomUUID` is missing on plain-http pages that are not localhost. */
export function newClientId(): string {
  const cryptoApi = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (cryptoApi?.randomUUID) return cryptoApi.randomUUID();
  const part = (): string => Math.random().toString(16).slice(2, 10).padEnd(8, "0");
  return `${part()}-${part().slice(0, 4)}-4${part().slice(0, 3)}-${part().slice(0, 4)}-${part()}${part().slice(0, 4)}`;
}
