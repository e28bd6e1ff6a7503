// The signed-in API key. Kept in sessionStorage: it survives a reload of this tab but not the
// closing of the tab, is never shared with other tabs, and never lands in localStorage or a
// cookie (a cookie would be sent with every request, including the static files). The chat
// and the operator page keep their keys apart.
export type KeySlot = "chat" | "operator";

const KEYS: Record<KeySlot, string> = { chat: "chatplane.apiKey", operator: "chatplane.operatorKey" };

export function storedApiKey(slot: KeySlot = "chat"): string | null {
  return sessionStorage.getItem(KEYS[slot]);
}

export function storeApiKey(apiKey: string, slot: KeySlot = "chat"): void {
  sessionStorage.setItem(KEYS[slot], apiKey);
}

export function forgetApiKey(slot: KeySlot = "chat"): void {
  sessionStorage.removeItem(KEYS[slot]);
}
