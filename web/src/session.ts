// The signed-in API key. Kept in sessionStorage: it survives a reload of this tab but not the
// closing of the tab, is never shared with other tabs, and never lands in localStorage or a
// cookie (a cookie would be sent with every request, including the static files).
const KEY = "chatplane.apiKey";

export function storedApiKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function storeApiKey(apiKey: string): void {
  sessionStorage.setItem(KEY, apiKey);
}

export function forgetApiKey(): void {
  sessionStorage.removeItem(KEY);
}
