/**
 * A small typed event emitter: `on("message", m => ...)` knows that `m` is
 * a `MessageFrame`. No dependency on Node's `events` so the client runs in
 * browsers unchanged.
 */
export type Listener<T> = (event: T) => void;

export class TypedEmitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(type, listener);
  }

  /** Like `on`, but the listener runs at most once. */
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    const remove = this.on(type, (event) => {
      remove();
      listener(event);
    });
    return remove;
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.listeners.get(type)?.delete(listener as Listener<never>);
  }

  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const set = this.listeners.get(type);
    if (!set) return;
    // A copy, so listeners may remove themselves while being called.
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(event);
      } catch (error) {
        // One application listener's bug must not break delivery to the
        // others nor the client's own state machine.
        reportListenerError(error);
      }
    }
  }
}

function reportListenerError(error: unknown): void {
  // queueMicrotask rethrows outside our call stack: the error shows up in the
  // console / unhandled-error hooks as usual, but the emit loop goes on.
  queueMicrotask(() => {
    throw error;
  });
}
