// Compiled into every mixsim executable of a MIXSIM_SANITIZE build. LeakSanitizer is off by
// default because Open MPI's dynamically loaded components leak at MPI_Finalize and are unloaded
// before LSan runs, so their frames cannot be named in a suppression file. Address and UB checks
// stay on; set ASAN_OPTIONS=detect_leaks=1 to look at leaks anyway.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
