// The model logs its state changes with console.debug (useful in a browser's console); keep
// test output to failures.
jest.spyOn(console, 'debug').mockImplementation(() => undefined);
