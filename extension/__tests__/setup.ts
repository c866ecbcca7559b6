// The model logs its state changes with console.debug (useful in a browser's console); keep
// test output to failures.
jest.spyOn(console, 'debug').mockImplementation(() => undefined);

// jsdom (the view tests) lacks DragEvent, which @lumino/dragdrop references when it loads.
if (typeof window !== 'undefined' && !('DragEvent' in window)) {
  (window as unknown as { DragEvent: unknown }).DragEvent = class DragEvent extends MouseEvent {};
}
